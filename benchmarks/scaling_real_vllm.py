"""One real vLLM worker started by `fleetgate up` (the lent H200, see ../shared/gpu/README.md): min 0, max 1.

    python benchmarks/scaling_real_vllm.py --model-dir /tmp/model [--out DIR]

Expects `vllm` on PATH and importable, and a model directory made by make_model_dir.py (dummy weights).
1. a cold request through the gateway: held while the worker starts, served; its TTFT against the worker's
   cold start by phase (from /admin/fleet);
2. idle: the worker is put to sleep (level 1) after idle_timeout;
3. a request wakes it: its TTFT against the wake time;
4. Ctrl-C: fleetgate exits 0 and no vLLM process is left.
Prints a summary and writes it to OUT/scaling_real_vllm.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port, wait_http

FLEET = """
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin_port}}}
pools:
  - name: llama
    limits: {{max_queue_wait: 900}}
    timeouts: {{first_byte_stream: 900}}
    workers:
      engine: vllm
      model: {model}
      served_model_name: llama-8b
      engine_args: [--load-format, dummy, --max-model-len, "8192", --gpu-memory-utilization, "0.85"]
      gpus: ["0"]
      min_workers: 0
      max_workers: 1
      idle_timeout: 10
      stabilization_window: 0
      sleep: true
      scaling: {{interval: 0.5}}
      log_dir: {logs}
"""


def ttft(url: str) -> float:
    body = {"model": "llama-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
            "ignore_eos": True, "stream": True}  # fmt: skip
    t0 = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=900) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                return time.monotonic() - t0
    raise RuntimeError("no content in the stream")


def worker(admin: str) -> dict[str, Any]:
    (w,) = httpx.get(f"{admin}/admin/fleet").json()["pools"]["llama"]["workers"]
    return dict(w)


def until(cond: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port, admin_port = free_port(), free_port()
    cfg = args.out / "fleet.yaml"
    cfg.write_text(
        FLEET.format(port=port, admin_port=admin_port, model=args.model_dir, logs=args.out / "logs")
    )
    log = (args.out / "fleetgate.log").open("wb")
    gw = subprocess.Popen(
        [sys.executable, "-m", "fleetgate", "up", str(cfg)], stdout=log, stderr=subprocess.STDOUT
    )
    url, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    summary: dict[str, Any] = {}
    pids: list[int] = []
    try:
        wait_http(f"{url}/ready", gw, 60)
        summary["cold_ttft_s"] = round(ttft(url), 2)
        w = worker(admin)
        pids.append(w["pid"])
        summary["cold_start_s"] = w["cold_start_s"]
        summary["phases_s"] = w["phases_s"]
        summary["warm_ttft_s"] = round(ttft(url), 3)
        t0 = time.monotonic()
        until(lambda: worker(admin)["state"] == "sleeping", 300)
        summary["idle_to_sleeping_s"] = round(time.monotonic() - t0, 1)
        summary["woken_ttft_s"] = round(ttft(url), 3)
        w = worker(admin)
        summary["wake_s"] = w["last_wake_s"]
        summary["wakes"] = w["wakes"]
        summary["same_pid_after_wake"] = w["pid"] == pids[0]
        metrics = httpx.get(f"{admin}/metrics").text
        summary["metrics"] = [
            line for line in metrics.splitlines()
            if line.startswith(("fleetgate_held_requests_total", "fleetgate_worker_wakeups_total",
                                "fleetgate_cold_starts_total"))
        ]  # fmt: skip
    finally:
        gw.send_signal(signal.SIGINT)
        summary["exit_code"] = gw.wait(120)
        log.close()
    summary["left_behind"] = [p for p in pids if Path(f"/proc/{p}").exists()]
    (args.out / "scaling_real_vllm.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
