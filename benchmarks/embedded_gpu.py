"""The embedded engine on a GPU with a model of real shapes: output tokens/s and TTFT at several
concurrencies, measured like vllm-reference's performance table (completions, 1,024 token-id prompt
tokens, 128 output tokens with `ignore_eos`, streamed), so the figures sit next to a real vLLM's.

    python benchmarks/embedded_gpu.py MODEL_DIR [--random-weights] [--concurrency 1 8 32] [--vllm-url URL]

MODEL_DIR needs config.json and a tokenizer (e.g. from ../shared/gpu/make_model_dir.py); `--random-weights`
first writes random bf16 safetensors of the config's shapes into it (vLLM's `--load-format dummy` has no
equivalent here). With `--vllm-url`, a running vLLM serving the same shapes is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port, wait_http


def write_random_weights(model_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
    model.save_pretrained(model_dir, safe_serialization=True)


def bench(url: str, concurrency: int, requests: int, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "fleetgate", "bench", "--url", f"{url}/v1", "--model", "m",
           "--api", "completions", "--token-ids", "--input-len", "1024", "--output-len", "128",
           "--load", f"concurrency={concurrency}", "--num-requests", str(requests), "--processes", "1",
           "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = json.loads((out / "results.json").read_text())["summary"]
    return {"tok_s": s["output_tok_s"], "ttft_p50": s["ttft"]["p50"], "ok": s["success_rate"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--vllm-url", help="a vLLM serving the same shapes as model `m`, measured alongside")
    args = ap.parse_args()
    if args.random_weights:
        started = time.monotonic()
        write_random_weights(args.model_dir)
        print(f"# random weights written in {time.monotonic() - started:.0f} s", flush=True)
    port = free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "fleetgate.engines.embedded", "--model", str(args.model_dir),
         "--device", "cuda", "--served-model-name", "m", "--port", str(port),
         "--max-num-seqs", str(max(args.concurrency))],
    )  # fmt: skip
    try:
        started = time.monotonic()
        wait_http(f"http://127.0.0.1:{port}/health", engine, 600, every=0.5)
        print(f"# embedded engine ready in {time.monotonic() - started:.0f} s", flush=True)
        targets = {"embedded": f"http://127.0.0.1:{port}"}
        if args.vllm_url:
            targets["vllm"] = args.vllm_url
        print(f"{'server':<10} {'conc':>5} {'out tok/s':>10} {'TTFT p50':>10} {'ok':>6}")
        for c in args.concurrency:
            for name, url in targets.items():
                with tempfile.TemporaryDirectory() as d:
                    r = bench(url, c, max(4, 2 * c), Path(d))
                print(f"{name:<10} {c:>5} {r['tok_s']:>10.0f} {r['ttft_p50'] * 1000:>8.0f}ms {r['ok']:>6.0%}",
                      flush=True)  # fmt: skip
    finally:
        engine.terminate()
        engine.wait(60)


if __name__ == "__main__":
    main()
