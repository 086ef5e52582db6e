"""How much load `fleetgate bench` itself can offer on this machine, with one process and with several.

Starts simulators (`--sim-processes`, sharing one port) with a high `--time-scale` (so requests finish in
well under a millisecond of GPU time and the simulators stay cheap) and runs `fleetgate bench` at constant
rates with `--processes 1` and `--processes N`, short completions with token-id prompts. Prints, per rate
and process count: achieved request rate, success, schedule lag p50/p99, and whether it held the schedule
(lag p99 < 5 ms).

    python benchmarks/bench_capacity.py --rates 500,1000,1500 --processes 1,2 --duration 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port, start_sim


def run_bench(url: str, rate: int, processes: int, duration: float, out: Path) -> dict[str, float]:
    cmd = [
        sys.executable, "-m", "fleetgate", "bench", "--url", url, "--model", "sim", "--api", "completions",
        "--token-ids", "--input-len", "16", "--output-len", "2", "--load", f"rate={rate}",
        "--duration", str(duration), "--warmup", "1", "--processes", str(processes), "--out", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = json.loads((out / "results.json").read_text())["summary"]
    return {
        "rate": s["request_rate"],
        "success": s["success_rate"],
        "lag_p50": s["lag"].get("p50") or float("nan"),
        "lag_p99": s["lag"].get("p99") or float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="500,1000,1500")
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--time-scale", default="1000")
    ap.add_argument("--sim-processes", type=int, default=1, help="simulator processes sharing the port")
    args = ap.parse_args()
    port = free_port()
    flags = ["--time-scale", args.time_scale, "--max-num-seqs", "1024"]
    if args.sim_processes > 1:
        flags += ["--replicas", str(args.sim_processes), "--reuse-port"]
    sim = start_sim(port, *flags)
    url = f"http://127.0.0.1:{port}/v1"
    print("| offered req/s | processes | achieved req/s | success | lag p50 | lag p99 | held (p99 < 5 ms) |")
    print("|---|---|---|---|---|---|---|")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rate in (int(r) for r in args.rates.split(",")):
                for procs in (int(p) for p in args.processes.split(",")):
                    r = run_bench(url, rate, procs, args.duration, Path(tmp) / f"r{rate}p{procs}")
                    held = "yes" if r["lag_p99"] < 0.005 and r["success"] > 0.999 else "no"
                    print(
                        f"| {rate} | {procs} | {r['rate']:,.0f} | {r['success']:.2%} | "
                        f"{r['lag_p50'] * 1000:.2f} ms | {r['lag_p99'] * 1000:.2f} ms | {held} |",
                        flush=True,
                    )
    finally:
        sim.terminate()
        sim.wait(10)


if __name__ == "__main__":
    main()
