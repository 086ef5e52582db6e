"""What one simulator process costs: CPU seconds per streamed token, and how many streams it holds.

Starts `fleetgate sim` as a child process, drives it with a minimal asyncio HTTP/1.1 client (so the client is
not the bottleneck) and reads the simulator's CPU time from /proc before and after.

    python benchmarks/sim_cost.py                   # both measurements
    python benchmarks/sim_cost.py --streams 2000    # hold 2,000 concurrent streams
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from procs import cpu_seconds, free_port, start_sim


@dataclass
class StreamResult:
    events: int = 0
    ok: bool = False


async def one_stream(port: int, body: bytes, out: StreamResult) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body)
    buf = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        buf += data
        out.events += data.count(b"data: ") - data.count(b"data: [DONE]")
        if b"data: [DONE]" in buf[-64:]:
            out.ok = True
            break
        buf = buf[-64:]
    writer.close()


async def drive(port: int, streams: int, tokens: int, prompt_len: int) -> list[StreamResult]:
    body = (
        b'{"model":"sim","prompt":[' + b",".join(b"%d" % (1000 + i) for i in range(prompt_len)) + b"],"
        b'"max_tokens":%d,"ignore_eos":true,"stream":true}' % tokens
    )
    results = [StreamResult() for _ in range(streams)]
    await asyncio.gather(*(one_stream(port, body, r) for r in results))
    return results


def measure(streams: int, tokens: int, time_scale: float, prompt_len: int) -> dict[str, float]:
    port = free_port()
    proc = start_sim(port, "--time-scale", str(time_scale), "--max-num-seqs", str(max(streams, 256)))
    try:
        cpu0 = cpu_seconds(proc.pid)
        me0 = time.process_time()
        t0 = time.monotonic()
        results = asyncio.run(drive(port, streams, tokens, prompt_len))
        wall = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        client_cpu = time.process_time() - me0
    finally:
        proc.terminate()
        proc.wait(10)
    events = sum(r.events for r in results)
    return {
        "streams": streams,
        "completed": sum(r.ok for r in results),
        "tokens": events,
        "wall_s": wall,
        "sim_cpu_s": cpu,
        "us_per_token": cpu / max(events, 1) * 1e6,
        "tokens_per_s_per_stream": events / streams / wall,
        "client_cpu_s": client_cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=2000, help="concurrent streams for the capacity run")
    ap.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    args = ap.parse_args()
    rows = [
        ("CPU per token (200 streams, K=10)", measure(200, args.tokens, 10.0, 64)),
        (f"capacity ({args.streams} streams, K=1)", measure(args.streams, args.tokens // 2, 1.0, 64)),
    ]
    cols = ("done", "tokens", "wall s", "sim CPU s", "us/token", "tok/s/str")
    print(f"{'run':40} " + " ".join(f"{c:>9}" for c in cols))
    for name, r in rows:
        done = f"{r['completed']:.0f}/{r['streams']:.0f}"
        print(
            f"{name:40} {done:>11} {r['tokens']:>8.0f} {r['wall_s']:>7.1f} {r['sim_cpu_s']:>9.2f} "
            f"{r['us_per_token']:>9.1f} {r['tokens_per_s_per_stream']:>9.1f}"
        )


if __name__ == "__main__":
    main()
