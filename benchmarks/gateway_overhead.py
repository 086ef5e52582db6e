"""What the gateway adds: latency against going direct, and CPU per request and per relayed event.

Starts two simulators and, in turn, each contender in front of them, and drives every one with
`fleetgate bench` at the same load in the same run: direct (one simulator, for the latency baseline),
fleetgate, and any peer given with `--peer NAME='COMMAND'` (a router you installed or built yourself;
`{port}` and `{upstreams}` (the URLs as separate arguments, or comma-joined inside a longer argument) are
filled in, e.g.
`--peer vllm-router='vllm-router --port {port} --worker-urls {upstreams}'`).

    python benchmarks/gateway_overhead.py --rate 300 --duration 20 [--peer ...]

Reports, per contender: TTFT and e2e p50/p99, added latency (the same quantile minus direct's), CPU seconds
of the contender process (and its children) per request and per relayed SSE event.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port, start_sim, tree_cpu, wait_http

BENCH_PREFIX: list[str] = []


def expand(command: list[str], port: int, upstreams: list[str]) -> list[str]:
    """Fill in {port} and {freeport} (another free port, e.g. for a peer's own metrics listener); a bare
    {upstreams} becomes the URLs, inside a longer token their comma-joined list."""
    out: list[str] = []
    for token in command:
        token = token.replace("{port}", str(port)).replace("{freeport}", str(free_port()))
        if token == "{upstreams}":
            out += upstreams
        else:
            out.append(token.replace("{upstreams}", ",".join(upstreams)))
    return out


def bench(url: str, rate: float, duration: float, stream: bool, out: Path, api_name: str) -> dict[str, float]:
    # completions with token-id prompts is the cheapest request for every contender to parse; sglang-router
    # 0.3.2 refuses token-id prompts (422), so compare it with --api chat.
    api = ["--api", api_name, *(["--token-ids"] if api_name == "completions" else [])]
    api += ["--input-len", "128", "--output-len", "16" if stream else "1"]
    cmd = [sys.executable, "-m", "fleetgate", "bench", "--url", f"{url}/v1", "--model", "sim", *api,
           "--load", f"rate={rate}", "--duration", str(duration), "--warmup", "2", "--processes", "1",
           "--out", str(out)]  # fmt: skip
    subprocess.run([*BENCH_PREFIX, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = json.loads((out / "results.json").read_text())
    s = res["summary"]
    events = sum(r["chunks"] for r in res["requests"])
    if not s["ok"]:
        print(f"{url}: no request succeeded: {s['errors_by_type']} {res['requests'][0]['error_message']}",
              file=sys.stderr)  # fmt: skip
        nan = float("nan")
        return {"requests": float(len(res["requests"])), "events": 0.0, "success": 0.0, "ttft_p50": nan,
                "ttft_p99": nan, "e2e_p50": nan, "e2e_p99": nan}  # fmt: skip
    return {
        "requests": float(len(res["requests"])),
        "events": float(events),
        "success": s["success_rate"],
        "ttft_p50": s["ttft"]["p50"],
        "ttft_p99": s["ttft"]["p99"],
        "e2e_p50": s["e2e"]["p50"],
        "e2e_p99": s["e2e"]["p99"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=300)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--time-scale", default="10")
    ap.add_argument("--api", choices=["completions", "chat"], default="completions")
    ap.add_argument("--runs", type=int, default=3, help="runs per contender; figures are their medians")
    ap.add_argument("--peer", action="append", default=[], help="NAME='COMMAND with {port} and {upstreams}'")
    ap.add_argument("--pin-contender", default="", help="taskset CPU list for the contender, e.g. 4")
    ap.add_argument("--pin-sims", default="", help="taskset CPU list for the simulators, e.g. 0-3")
    ap.add_argument("--pin-bench", default="", help="taskset CPU list for the load generator, e.g. 5-8")
    args = ap.parse_args()
    BENCH_PREFIX[:] = ["taskset", "-c", args.pin_bench] if args.pin_bench else []
    sims = []
    ports = [free_port(), free_port()]
    for p in ports:
        sims.append(start_sim(p, "--time-scale", args.time_scale))
        if args.pin_sims:
            subprocess.run(["taskset", "-a", "-p", "-c", args.pin_sims, str(sims[-1].pid)], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
    upstreams = [f"http://127.0.0.1:{p}" for p in ports]
    contenders: list[tuple[str, list[str] | None]] = [("direct", None)]
    contenders.append(("fleetgate", [sys.executable, "-m", "fleetgate", "gateway", "--host", "127.0.0.1",
                                     "--port", "{port}", "--admin-port", str(free_port()),
                                     *[a for u in upstreams for a in ("--upstream", u)]]))  # fmt: skip
    for spec in args.peer:
        name, _, command = spec.partition("=")
        contenders.append((name, shlex.split(command)))
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, command in contenders:
                if command is None:
                    url, proc = upstreams[0], None
                else:
                    port = free_port()
                    argv = expand(command, port, upstreams)
                    if args.pin_contender:
                        argv = ["taskset", "-c", args.pin_contender, *argv]
                    log = Path(tmp) / f"{name}.log"
                    with log.open("wb") as out:
                        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
                    url = f"http://127.0.0.1:{port}"
                    try:
                        wait_http(f"{url}/v1/models", proc)
                    except SystemExit:
                        print(f"{name} did not start:\n" + log.read_text()[-2000:], file=sys.stderr)
                        raise
                for stream in (False, True):
                    runs = []
                    for i in range(args.runs):
                        cpu0 = tree_cpu(proc.pid) if proc else 0.0
                        run_dir = Path(tmp) / f"{name}-{stream}-{i}"
                        r = bench(url, args.rate, args.duration, stream, run_dir, args.api)
                        r["cpu"] = (tree_cpu(proc.pid) - cpu0) if proc else 0.0
                        runs.append(r)
                    # The median of each figure over the runs, as DESIGN asks.
                    rows.append((name, stream, {k: statistics.median(r[k] for r in runs) for k in runs[0]}))
                if proc is not None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
    finally:
        for s in sims:
            s.terminate()
            s.wait(10)
    base = {stream: r for name, stream, r in rows if name == "direct"}
    print(
        f"rate {args.rate:g} req/s, {args.duration:g} s per run, simulators at --time-scale {args.time_scale}"
    )
    cols = (
        "contender",
        "stream",
        "success",
        "TTFT p50",
        "TTFT p99",
        "added p50",
        "added p99",
        "CPU/req",
        "CPU/event",
    )
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, stream, r in rows:
        b = base[stream]
        key = "ttft" if stream else "e2e"
        add50 = (r[f"{key}_p50"] - b[f"{key}_p50"]) * 1000
        add99 = (r[f"{key}_p99"] - b[f"{key}_p99"]) * 1000
        per_req = r["cpu"] / r["requests"] * 1e6 if r["cpu"] else float("nan")
        per_event = r["cpu"] / max(r["events"], 1) * 1e6 if stream and r["cpu"] else float("nan")
        print(f"| {name} | {stream} | {r['success']:.2%} | {r['ttft_p50'] * 1000:.2f} ms | "
              f"{r['ttft_p99'] * 1000:.2f} ms | {add50:+.2f} ms | {add99:+.2f} ms | {per_req:.0f} µs | "
              f"{per_event:.1f} µs |")  # fmt: skip


if __name__ == "__main__":
    main()
