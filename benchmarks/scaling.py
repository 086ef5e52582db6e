"""Scale to zero and back: `fleetgate up` with simulated workers under a bursty and a diurnal trace.

    python benchmarks/scaling.py                      # both traces, stop and sleep, K = 10
    python benchmarks/scaling.py --trace bursty --sleep --time-scale 10

Workers are `fleetgate sim` processes with the profile's measured cold start (92 s for Llama-3.1-8B on an
H200) and step times, all divided by K. The trace's own times are wall seconds (not scaled). A poller reads
/admin/fleet every 50 ms and gives: when a worker becomes ready after the pool had none (the first request's
TTFT is compared with that moment), and worker-seconds held (starting, ready, draining and sleeping
processes: a sleeping worker keeps its GPU), against an always-on fleet of max_workers.

Reported per run: client errors (every request is held within the queue's bounds, so the target is 0),
TTFT of the first request after idle minus the time it waited for a worker to be ready or awake (target
<= 0.5 s), GPU-seconds used / always-on (target <= 40% on the bursty trace), and during the ramps the share
of requests that arrived while a worker was ready ("warm") whose TTFT met --slo; held ones wait for a cold
start by design and are counted apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).parent))
from procs import free_port, wait_http

POLL = 0.05
PROFILE = "h200-llama-3.1-8b"
PROFILE_STARTUP = 92.0  # seconds, `fleetgate sim profiles`


@dataclass
class Phase:
    seconds: float
    rate: float  # requests per second (Poisson); 0 = idle


def bursty() -> list[Phase]:
    # Bursts twice the cold start (about 10 s at K=10), idle gaps long enough to scale to zero in between.
    return [Phase(5, 0), Phase(20, 8), Phase(40, 0), Phase(20, 8), Phase(15, 0)]


def diurnal(total: float = 60.0, steps: int = 12, peak: float = 10.0) -> list[Phase]:
    # One day squeezed into `total` seconds: night near zero, a smooth rise to the peak at noon.
    return [
        Phase(total / steps, round(peak * max(0.0, math.sin(math.pi * (i + 0.5) / steps)) ** 2, 2))
        for i in range(steps)
    ]


@dataclass
class Result:
    sent: float
    ttft: float | None = None
    error: str | None = None
    in_burst: bool = False


@dataclass
class Fleet:
    # (moment, whether some worker is ready from then on), at each change
    changes: list[tuple[float, bool]] = field(default_factory=list)
    worker_seconds: float = 0.0  # processes held: starting, ready, draining, sleeping
    awake_seconds: float = 0.0  # the same without sleeping ones
    cold_starts: int = 0
    wakes: int = 0
    peak: int = 0

    def ready(self, t: float) -> bool:
        return next((r for at, r in reversed(self.changes) if at <= t), False)

    def next_ready(self, t: float) -> float | None:
        return next((at for at, r in self.changes if at >= t and r), None)


def fleet_file(args: argparse.Namespace, port: int, admin_port: int, logs: Path) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin_port}}}
keepalive_after: 5
pools:
  - name: llama
    models: [llama-8b]
    limits: {{max_queue: 1024, max_queue_wait: 120}}
    workers:
      engine: sim
      model: {PROFILE}
      served_model_name: llama-8b
      engine_args: [--time-scale, "{args.time_scale}"]
      min_workers: 0
      max_workers: {args.max_workers}
      idle_timeout: {args.idle_timeout}
      sleep: {str(args.sleep).lower()}
      scaling: {{rule: {args.rule}, target: {args.target}, interval: 0.25}}
      stabilization_window: {args.idle_timeout}
      scale_up_period: 1
      log_dir: {logs}
"""


def poll_fleet(admin: str, stop: threading.Event, fleet: Fleet) -> None:
    """On a thread of its own: the client's event loop, busy with streams, would date readiness late."""
    with httpx.Client(timeout=2.0) as http:
        last = time.monotonic()
        had_ready = False
        seen_starts: set[tuple[str, float | None]] = set()
        while not stop.is_set():
            pool = http.get(f"{admin}/admin/fleet").json()["pools"]["llama"]
            now = time.monotonic()
            workers = pool["workers"]
            held = [w for w in workers if w["state"] in ("starting", "ready", "draining", "sleeping")]
            fleet.worker_seconds += len(held) * (now - last)
            fleet.awake_seconds += sum(w["state"] != "sleeping" for w in held) * (now - last)
            fleet.peak = max(fleet.peak, len(held))
            last = now
            ready = any(w["state"] == "ready" for w in workers)
            if ready != had_ready:
                fleet.changes.append((now, ready))
            had_ready = ready
            for w in workers:
                if w["cold_start_s"] is not None:
                    seen_starts.add((w["id"], w["cold_start_s"]))
                fleet.wakes = max(fleet.wakes, sum(x["wakes"] for x in workers))
            fleet.cold_starts = len(seen_starts)
            stop.wait(POLL)


async def one(sdk: openai.AsyncOpenAI, r: Result) -> None:
    try:
        stream = await sdk.chat.completions.create(
            model="llama-8b",
            messages=[{"role": "user", "content": "Summarise the plot of a long novel."}],
            max_tokens=64,
            stream=True,
        )
        async for chunk in stream:
            if r.ttft is None and chunk.choices and chunk.choices[0].delta.content:
                r.ttft = time.monotonic() - r.sent
    except openai.APIError as e:
        r.error = f"{type(e).__name__}: {e}"


async def drive(url: str, phases: list[Phase], seed: int) -> list[Result]:
    rng = random.Random(seed)
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
    results: list[Result] = []
    tasks: list[asyncio.Task[None]] = []
    for phase in phases:
        end = time.monotonic() + phase.seconds
        while phase.rate > 0:
            await asyncio.sleep(rng.expovariate(phase.rate))
            if time.monotonic() >= end:
                break
            r = Result(time.monotonic(), in_burst=True)
            results.append(r)
            tasks.append(asyncio.create_task(one(sdk, r)))
        await asyncio.sleep(max(0.0, end - time.monotonic()))
    await asyncio.gather(*tasks)
    await sdk.close()
    return results


def first_after_idle(results: list[Result], fleet: Fleet, idle: float) -> list[float]:
    """For each request that found no worker ready after `idle` s without requests: when its first token
    came, counted from the moment a worker was ready (the poller's 50 ms resolution applies)."""
    out = []
    prev = -math.inf
    for r in sorted(results, key=lambda r: r.sent):
        if r.sent - prev > idle and r.ttft is not None and not fleet.ready(r.sent):
            ready = fleet.next_ready(r.sent)
            if ready is not None:
                out.append(r.sent + r.ttft - ready)
        prev = r.sent
    return out


async def measure(url: str, admin: str, phases: list[Phase], seed: int) -> tuple[list[Result], Fleet, float]:
    stop = threading.Event()
    fleet = Fleet()
    poller = threading.Thread(target=poll_fleet, args=(admin, stop, fleet), daemon=True)
    poller.start()
    started = time.monotonic()
    results = await drive(url, phases, seed)
    wall = time.monotonic() - started
    stop.set()
    poller.join()
    return results, fleet, wall


def run(args: argparse.Namespace, trace: str) -> dict[str, object]:
    phases = bursty() if trace == "bursty" else diurnal()
    port, admin_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="fleetgate-scaling-"))
    cfg = work / "fleet.yaml"
    cfg.write_text(fleet_file(args, port, admin_port, work / "logs"))
    log = (work / "fleetgate.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetgate", "up", str(cfg)], stdout=log, stderr=subprocess.STDOUT
    )
    url, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    try:
        wait_http(f"{url}/health", proc)
        results, fleet, wall = asyncio.run(measure(url, admin, phases, args.seed))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        log.close()
    errors = [r.error for r in results if r.error]
    overheads = first_after_idle(results, fleet, idle=args.idle_timeout)
    warm = [r for r in results if fleet.ready(r.sent)]
    met = sum(1 for r in warm if r.ttft is not None and r.ttft <= args.slo)
    always_on = args.max_workers * wall
    return {
        "trace": trace,
        "sleep": args.sleep,
        "requests": len(results),
        "client_errors": len(errors),
        "error_samples": errors[:3],
        "first_after_idle_ttft_minus_ready_s": [round(x, 3) for x in overheads],
        "held": len(results) - len(warm),
        "gpu_seconds": round(fleet.worker_seconds, 1),
        "always_on_gpu_seconds": round(always_on, 1),
        "gpu_share": round(fleet.worker_seconds / always_on, 3),
        "awake_share": round(fleet.awake_seconds / always_on, 3),
        "slo_attainment": round(met / len(warm), 4) if warm else None,
        "cold_starts": fleet.cold_starts,
        "wakes": fleet.wakes,
        "peak_workers": fleet.peak,
        "exit_code": proc.returncode,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", choices=["bursty", "diurnal", "both"], default="both")
    p.add_argument("--sleep", action="store_true", help="scale down by sleeping (and also run without)")
    p.add_argument("--time-scale", type=float, default=10.0, help="K: the simulator's times divided by K")
    p.add_argument("--max-workers", type=int, default=4)
    p.add_argument("--rule", choices=["queue_delay", "request_count", "concurrency"], default="queue_delay")
    p.add_argument("--target", type=float, default=2.0, help="the rule's target (queue_delay: seconds)")
    p.add_argument("--idle-timeout", type=float, default=5.0)
    p.add_argument("--slo", type=float, default=1.0, help="TTFT SLO, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    traces = ["bursty", "diurnal"] if args.trace == "both" else [args.trace]
    modes = [False, True] if args.sleep else [False]
    rows = []
    for trace in traces:
        for sleep in modes:
            args.sleep = sleep
            rows.append(run(args, trace))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nmachine: {platform.node()} {os.cpu_count()} cores, {platform.python_version()}; "
          f"profile {PROFILE} cold start {PROFILE_STARTUP:.0f} s / K={args.time_scale:g}")  # fmt: skip
    print("| trace | scale down | requests (held) | client errors | first after idle: TTFT - ready (s) | "
          f"GPU-s held / always-on | awake only | SLO (TTFT <= {args.slo:g} s) met, warm | cold starts | "
          "wakes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trace']} | {'sleep' if r['sleep'] else 'stop'} | {r['requests']} ({r['held']}) | "
              f"{r['client_errors']} | {r['first_after_idle_ttft_minus_ready_s']} | {r['gpu_seconds']} / "
              f"{r['always_on_gpu_seconds']} ({r['gpu_share']:.0%}) | {r['awake_share']:.0%} | "
              f"{r['slo_attainment']} | {r['cold_starts']} | {r['wakes']} |")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
