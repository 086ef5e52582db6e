"""The ceiling of one gateway process: how many streamed SSE events it relays per second of one CPU core.

Starts simulators that emit tokens as fast as their CPU allows (`--time-scale`, high), then, in turn, each
contender in front of them (fleetgate, and any peer given with `--peer NAME='COMMAND'`, as in
gateway_overhead.py), and keeps `--streams` long streams open through it for `--duration` seconds with a lean
asyncio client (raw sockets on uvloop, counting `data: ` lines). For each contender it reports:

- events/s reached at the client, and the contender's CPU in cores over the same window;
- **events per CPU-second of the contender** (the events/s it would relay at 100% of one core, the ceiling),
  and its inverse, CPU µs per event;
- the client's and the simulators' CPU, to show whether they, not the contender, set the pace.

On a machine with few cores the simulators and the client share the cores with the contender, so it rarely
reaches a full core by itself: events per contender CPU-second is the comparable figure.

    python benchmarks/gateway_ceiling.py --streams 64 --duration 20 \\
        --peer "vllm-router=vllm-router --host 127.0.0.1 --port {port} --worker-urls {upstreams}"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import expand, tree_cpu
from procs import free_port, start_sim, wait_http


async def one_stream(port: int, request: bytes, counts: list[int], stop: asyncio.Event) -> None:
    """Streams one after another on fresh connections until `stop`; adds each read's events to counts[0]."""
    while not stop.is_set():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        tail = b""
        try:
            while True:
                data = await reader.read(262144)
                if not data:
                    break
                counts[0] += data.count(b"data: ")
                counts[2] += 1
                tail = (tail + data)[-64:]
                if b"[DONE]" in tail or stop.is_set():
                    break
        except OSError:
            counts[1] += 1
        writer.close()


async def drive(
    port: int, streams: int, tokens: int, warmup: float, duration: float, pids: dict[str, int]
) -> dict[str, float]:
    body = (
        b'{"model":"sim","prompt":[1,2,3,4,5,6,7,8],"max_tokens":%d,"ignore_eos":true,"stream":true}' % tokens
    )
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    counts = [0, 0, 0]  # events, broken streams, reads
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(one_stream(port, request, counts, stop)) for _ in range(streams)]
    await asyncio.sleep(warmup)
    events0, reads0, wall0, me0 = counts[0], counts[2], time.monotonic(), time.process_time()
    cpu0 = {name: tree_cpu(pid) for name, pid in pids.items()}
    await asyncio.sleep(duration)
    events, reads = counts[0] - events0, counts[2] - reads0
    wall, me = time.monotonic() - wall0, time.process_time() - me0
    cpu = {name: tree_cpu(pid) - cpu0[name] for name, pid in pids.items()}
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    for t in tasks:
        t.cancel()
    return {"events": events, "reads": reads, "wall": wall, "client": me, "errors": counts[1], **cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=64, help="streams kept open at once")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens per stream (one event each)")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--runs", type=int, default=3, help="runs per contender, taking turns; medians reported")
    ap.add_argument("--sims", type=int, default=2)
    ap.add_argument("--time-scale", default="1000")
    ap.add_argument("--peer", action="append", default=[], help="NAME='COMMAND with {port} and {upstreams}'")
    args = ap.parse_args()
    ports = [free_port() for _ in range(args.sims)]
    sims = [start_sim(p, "--time-scale", args.time_scale, "--max-num-seqs", "1024") for p in ports]
    upstreams = [f"http://127.0.0.1:{p}" for p in ports]
    fleetgate = [sys.executable, "-m", "fleetgate", "gateway", "--host", "127.0.0.1", "--port", "{port}",
                 "--admin-port", str(free_port())]  # fmt: skip
    fleetgate += [a for u in upstreams for a in ("--upstream", u)]
    contenders: list[tuple[str, list[str]]] = [("fleetgate", fleetgate)]
    for spec in args.peer:
        name, _, command = spec.partition("=")
        contenders.append((name, shlex.split(command)))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in contenders}
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, command in contenders:
                port = free_port()
                log = (Path(tmp) / f"{name}.log").open("wb")
                argv = expand(command, port, upstreams)
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
                wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
                procs[name] = (proc, port)
            # The contenders take turns, run by run, so a change in the machine's load touches all of them.
            for _ in range(args.runs):
                for name, _ in contenders:
                    proc, port = procs[name]
                    pids = {"contender": proc.pid, **{f"sim{i}": s.pid for i, s in enumerate(sims)}}
                    r = asyncio.run(drive(port, args.streams, args.tokens, args.warmup, args.duration, pids))
                    r["sims"] = sum(r.pop(f"sim{i}") for i in range(len(sims)))
                    results[name].append(r)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)
        for s in sims:
            s.terminate()
            s.wait(10)
    print(
        f"{args.streams} streams of {args.tokens} tokens kept open, {args.sims} simulators at --time-scale "
        f"{args.time_scale}, {args.duration:g} s per run, medians of {args.runs} runs; {os.cpu_count()} cores"
    )
    cols = [
        "contender", "events/s reached", "contender CPU (cores)", "events per contender CPU-s",
        "CPU µs / event",
        "events per client read", "client CPU (cores)", "client CPU µs / event", "simulators CPU (cores)",
        "errors",
    ]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    ceilings = {}
    for name, runs in results.items():

        def med(f: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[f] for r in runs)

        ceiling = statistics.median(r["events"] / r["contender"] for r in runs if r["contender"] > 0)
        ceilings[name] = ceiling
        print(f"| {name} | {med('events') / med('wall'):,.0f} | {med('contender') / med('wall'):.2f} | "
              f"**{ceiling:,.0f}** | {1e6 / ceiling:.1f} | {med('events') / max(med('reads'), 1):.1f} | "
              f"{med('client') / med('wall'):.2f} | "
              f"{1e6 * med('client') / max(med('events'), 1):.1f} | {med('sims') / med('wall'):.2f} | "
              f"{med('errors'):.0f} |")  # fmt: skip
    base = ceilings.get("fleetgate")
    for name, c in ceilings.items():
        if base and name != "fleetgate":
            print(f"fleetgate relays {base / c:.2f}x the events per CPU-second of {name}")


if __name__ == "__main__":
    main()
