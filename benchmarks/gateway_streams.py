"""Many concurrent streams through the gateway: do they all stay open, finish with usage, and what do they
cost in memory?

Starts simulators sharing one port (`--reuse-port`, one process per ~2,000 streams), the gateway in front of
them, and a minimal asyncio client that opens N streams at once (completions, `ignore_eos`, usage requested),
each long enough to stay open for `--hold` seconds at the simulated rate. Samples the gateway's RSS while all
streams are open and reports: streams finished with a usage chunk, tokens per second per stream, gateway RSS
at idle and at N streams, memory per 1,000 open streams.

    ulimit -n 20000; python benchmarks/gateway_streams.py --streams 9500 --hold 60
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port, wait_http


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def stream(port: int, body: bytes, out: list[tuple[bool, int]]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        out.append((False, 0))
        return
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    tail = b""
    events = 0
    usage = False
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            events += data.count(b"data: ")
            tail = (tail + data)[-4096:]
            usage = usage or b'"usage"' in data
            if b"data: [DONE]" in tail:
                break
    except OSError:
        pass
    writer.close()
    out.append((usage and b"data: [DONE]" in tail, events))


async def drive(port: int, n: int, tokens: int, gw_pid: int, samples: list[float]) -> list[tuple[bool, int]]:
    body = (
        b'{"model":"sim","prompt":[1,2,3,4,5,6,7,8],"max_tokens":%d,"ignore_eos":true,"stream":true,'
        b'"stream_options":{"include_usage":true}}' % tokens
    )
    out: list[tuple[bool, int]] = []
    tasks = [asyncio.ensure_future(stream(port, body, out)) for _ in range(n)]
    while not all(t.done() for t in tasks):
        samples.append(rss_mib(gw_pid))
        await asyncio.sleep(1.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--hold", type=float, default=60.0, help="seconds each stream should stay open")
    ap.add_argument("--time-scale", type=float, default=1.0, help="simulators' --time-scale (token rate)")
    args = ap.parse_args()
    sim_port, gw_port = free_port(), free_port()
    replicas = max(1, -(-args.streams // 2000))
    sim = subprocess.Popen(
        [sys.executable, "-m", "fleetgate", "sim", "--port", str(sim_port), "--startup-time", "0",
         "--served-model-name", "sim", "--replicas", str(replicas), "--reuse-port", "--max-num-seqs", "2048",
         "--time-scale", str(args.time_scale)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    gw = subprocess.Popen(
        [sys.executable, "-m", "fleetgate", "gateway", "--upstream", f"http://127.0.0.1:{sim_port}",
         "--host", "127.0.0.1", "--port", str(gw_port), "--admin-port", str(free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/ready", gw, 60, every=0.2)
        idle = rss_mib(gw.pid)
        # The H200 profile with ~2,000 running sequences per replica steps about 5 times a second.
        tokens = int(args.hold * 5 * args.time_scale)
        samples: list[float] = []
        started = time.monotonic()
        results = asyncio.run(drive(gw_port, args.streams, tokens, gw.pid, samples))
        wall = time.monotonic() - started
    finally:
        gw.terminate()
        sim.terminate()
        gw.wait(30)
        sim.wait(30)
    ok = sum(1 for good, _ in results if good)
    events = sum(e for _, e in results)
    peak = max(samples, default=idle)
    print(
        "| streams | finished with usage | wall s | tokens/s each | RSS idle | RSS peak | per 1,000 streams |"
    )
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.streams} | {ok} | {wall:.0f} | {events / args.streams / wall:.1f} | {idle:.0f} MiB | "
          f"{peak:.0f} MiB | {(peak - idle) / args.streams * 1000:.1f} MiB |")  # fmt: skip


if __name__ == "__main__":
    main()
