"""python -m fleetgate.engines.embedded --model DIR: serve a local model with vLLM's API on CPU or one GPU."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetgate.engines.embedded.logs import phase
from fleetgate.engines.embedded.settings import EngineSettings

if TYPE_CHECKING:
    from fleetgate.engines.embedded.loader import Plan

_EPILOG = """\
Readiness: the engine prints one line per startup phase on stdout,
  INFO MM-DD HH:MM:SS [fleetgate.embedded] phase=ready url=http://HOST:PORT model=NAME
(phases: download (hub ids not yet cached), load, loaded, kv_cache, ready, stopped; on failure
phase=error message="..." and exit status 2).
GET /health answers 200 once ready. SIGINT or SIGTERM stops it (exit status 0).

Examples:
  python -m fleetgate.engines.embedded --demo                      # a tiny random model, made on first run
  python -m fleetgate.engines.embedded --model ~/models/Qwen2.5-0.5B-Instruct --port 8001
"""


def parse_args(argv: Sequence[str] | None = None) -> EngineSettings:
    p = argparse.ArgumentParser(
        prog="python -m fleetgate.engines.embedded",
        description="Serve a Hugging Face model directory with vLLM's OpenAI-compatible API and metrics, "
        "on the CPU or one GPU (fleetgate's embedded engine).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every flag's dest is an EngineSettings field, with vLLM's flag name where vLLM has one.
    add = p.add_argument
    add(
        "--model",
        default="",
        metavar="DIR",
        help="model directory (config.json, *.safetensors, tokenizer) or hub id",
    )
    add(
        "--demo",
        action="store_true",
        help="serve the demo model (made on first run; its output is meaningless)",
    )
    add(
        "--served-model-name",
        dest="served_model_names",
        nargs="+",
        default=[],
        metavar="NAME",
        help="names clients use (default: --model)",
    )
    add("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    add("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    add("--device", choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    add("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    add("--max-num-seqs", type=int, default=32, metavar="N", help="sequences decoded together (default: 32)")
    add("--max-model-len", type=int, metavar="N", help="context length (default: the model's, or what fits)")
    add(
        "--max-num-batched-tokens",
        type=int,
        default=2048,
        metavar="N",
        help="tokens per engine step; longer prompts are prefilled in chunks (default: 2048)",
    )
    add("--block-size", type=int, default=16, metavar="N", help="tokens per KV-cache block (default: 16)")
    add(
        "--kv-cache-gib",
        type=float,
        metavar="GIB",
        help="KV-cache memory (default: 4 on the CPU, what --gpu-memory-utilization leaves on a GPU)",
    )
    add(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        metavar="FRACTION",
        help="share of the GPU the engine may use (default: 0.9)",
    )
    add(
        "--no-enable-prefix-caching",
        dest="enable_prefix_caching",
        action="store_false",
        help="do not reuse the KV cache of shared prompt prefixes",
    )
    add("--seed", type=int, default=0, help="seed for requests that give none (default: 0)")
    add(
        "--chat-template",
        metavar="FILE",
        help="Jinja chat template: a file, or the template itself (default: the tokenizer's)",
    )
    add(
        "--cpu-threads",
        type=int,
        metavar="N",
        help="PyTorch threads on the CPU (default: the usable cores but one, which serves HTTP)",
    )
    args = p.parse_args(argv)
    if not args.model and not args.demo:
        p.error("give --model DIR, or --demo for the demo model")
    return EngineSettings(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C must still stop us, even while loading.
    # SIGTERM is a request to stop as well: both end in a clean exit with status 0.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _serve(settings)
    except KeyboardInterrupt:
        phase("stopped")
        return 0


def _serve(settings: EngineSettings) -> int:
    import dataclasses

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    from fleetgate.engines.embedded import demo, loader

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    # transformers' switch turns the hub client's bars off too: a download's progress is what a user
    # waiting on a cold start wants to see (the supervisor reads it off the bars), so they come back.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    from huggingface_hub.utils.tqdm import enable_progress_bars

    enable_progress_bars()
    try:
        if settings.demo:
            path = demo.ensure(Path(settings.model) if settings.model else None)
            names = settings.served_model_names or [demo.DEMO_NAME]
            settings = dataclasses.replace(settings, model=str(path), served_model_names=names)
            print(demo.NOTICE, file=sys.stderr, flush=True)
        path = loader.locate(settings.model, on_download=lambda: phase("download", model=settings.model))
        template = None if settings.chat_template is None else loader.chat_template(settings.chat_template)
        plan = loader.plan(settings, path)
        threads = loader.cpu_threads(plan, settings.cpu_threads)
        phase(
            "load", model=path, task=plan.task, architecture=plan.architecture, device=plan.device,
            dtype=str(plan.dtype).removeprefix("torch."), parameters=plan.parameters,
            weights_gib=round(plan.weights_bytes / 2**30, 3), threads=threads,
        )  # fmt: skip
        started = time.monotonic()
        tokenizer = loader.load_tokenizer(path, template)
        model = loader.load_model(plan)
    except loader.LoadError as e:
        phase("error", message=str(e))
        return 2
    phase("loaded", seconds=round(time.monotonic() - started, 2))
    if plan.task == "generate":
        phase(
            "kv_cache", blocks=plan.num_blocks, block_size=plan.block_size, tokens=plan.kv_tokens,
            max_model_len=plan.max_model_len, gib=round(plan.kv_tokens * plan.kv_bytes_per_token / 2**30, 3),
        )  # fmt: skip
    return _listen(settings, plan, model, tokenizer)


def _listen(settings: EngineSettings, plan: Plan, model: Any, tokenizer: Any) -> int:
    import uvicorn

    from fleetgate.engines.embedded.server import build

    server = build(settings, plan, model, tokenizer)
    host, port = settings.host, settings.port
    url = f"http://{host}:{port}"
    name = server.name

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                phase("ready", url=url, model=name)

    # In-flight streams get 3 s after a signal: a worker that is told to stop must stop.
    config = uvicorn.Config(
        server.app(), host=host, port=port, log_level="warning", timeout_graceful_shutdown=3
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            _Server(config).run()
    except SystemExit:  # uvicorn exits when it cannot bind or the app fails to start
        phase("error", message=f"cannot serve on {url} (see the lines above)")
        return 2
    phase("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
