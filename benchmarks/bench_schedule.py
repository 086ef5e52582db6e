"""Timing claims that were test thresholds, measured here instead (a busy 2-core machine made them flaky):

1. `fleetgate bench` trace replay: how late each request is sent after its timestamp (lag p50/p99/max), at the
   trace's own pace, against a simulator on this machine.
2. The simulator's JSON generator: microseconds per typical tool-call schema.

    python benchmarks/bench_schedule.py            # both
    python benchmarks/bench_schedule.py --requests 400
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procs import free_port, start_sim

SEARCH = {
    "type": "object",
    "properties": {"query": {"type": "string"}, "city": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["query"],
}
ITINERARY = {
    "type": "object",
    "properties": {"segments": {"type": "array", "items": {"type": "integer"}}, "days": {"type": "integer"}},
    "required": ["segments", "days"],
}


def trace_lag(requests: int, rate: float) -> list[float]:
    port = free_port()
    sim = start_sim(port)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.jsonl"
            rng = random.Random(0)
            t = 0.0
            lines = []
            for _ in range(requests):
                lines.append(json.dumps({"timestamp": round(t, 4), "input_tokens": 50, "output_tokens": 5}))
                t += rng.expovariate(rate)
            trace.write_text("\n".join(lines) + "\n")
            out = Path(tmp) / "out"
            cmd = [sys.executable, "-m", "fleetgate", "bench", "--url", f"http://127.0.0.1:{port}/v1",
                   "--model", "sim", "--workload", f"trace:{trace}", "--out", str(out)]  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
            results: dict[str, Any] = json.loads((out / "results.json").read_text())
    finally:
        sim.kill()
        sim.wait()
    return sorted(r["sent"] - r["scheduled"] for r in results["requests"])


def jsongen_us(rounds: int) -> float:
    from fleetgate.sim.jsongen import generate

    rng = random.Random(0)
    start = time.perf_counter()
    for _ in range(rounds):
        generate(SEARCH, rng)
        generate(ITINERARY, rng)
    return (time.perf_counter() - start) / (2 * rounds) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0, help="the trace's mean requests per second")
    args = ap.parse_args()
    lag = trace_lag(args.requests, args.rate)
    ms = [x * 1e3 for x in lag]
    print(
        f"trace replay, {len(ms)} requests at {args.rate:g}/s: lag p50 {statistics.median(ms):.1f} ms, "
        f"p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms, earliest {ms[0]:.2f} ms"
    )
    print(f"jsongen: {jsongen_us(500):.0f} us per typical tool schema")


if __name__ == "__main__":
    main()
