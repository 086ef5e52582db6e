"""What large request bodies cost the gateway in memory while they are in flight, and after.

Starts one simulator that never answers (`--fault-hang-rate 1`, so requests stay in flight for as long as the
client waits) and the gateway in front of it, then sends N requests at once, each with a body just under the
4 MiB cap built of many small JSON objects (the shapes that parse into the most Python objects per byte):

- `parts`: one chat message whose content is ~140,000 tiny text parts,
- `ids`: a completions prompt of ~600,000 token ids,
- `messages`: ~70,000 tiny chat messages.

Every body is distinct (no cache shares them). Reports the gateway's RSS at idle, its peak while the N
requests are held, and after the clients have left (then again after a second wave, to show whether what a
request left behind keeps growing), against the raw bytes in flight. The simulator's KV cache (`--kv-blocks`,
large enough for such prompts) sizes the gateway's approximate prefix index for it, which fills up to that
many keys: part of "RSS after" (about 150 bytes a key).

    python benchmarks/gateway_memory.py --requests 20 --shape parts
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_streams import rss_mib
from procs import free_port, wait_http

CAP = 4 * 1024 * 1024


def make_body(shape: str, i: int, limit: int = CAP - 4096) -> bytes:
    """A body of `shape` just under `limit` bytes, distinct for each `i`."""
    tag = f"r{i}-"
    if shape == "parts":
        part = {"type": "text", "text": "ab"}
        n = limit // len(orjson.dumps(part))
        parts = [{"type": "text", "text": tag}] + [part] * (n - 1)
        body = {"model": "sim", "messages": [{"role": "user", "content": parts}], "max_tokens": 1}
    elif shape == "ids":
        n = limit // len(b"12345,")
        body = {"model": "sim", "prompt": [i + 1] + [12345] * (n - 1), "max_tokens": 1}
    elif shape == "messages":
        m = {"role": "user", "content": "ab"}
        n = limit // len(orjson.dumps(m))
        messages = [{"role": "user", "content": tag}] + [m] * (n - 1)
        body = {"model": "sim", "messages": messages, "max_tokens": 1}
    else:
        raise SystemExit(f"unknown shape {shape}")
    data = orjson.dumps(body)
    while len(data) > limit:  # the estimate was a little over: trim the repeated tail
        if shape == "ids":
            body["prompt"] = body["prompt"][: -(len(data) - limit) // 6 - 1]  # type: ignore[index]
        elif shape == "parts":
            parts = body["messages"][0]["content"]  # type: ignore[index]
            del parts[-(len(data) - limit) // 28 - 1 :]
        else:
            del body["messages"][-(len(data) - limit) // 32 - 1 :]  # type: ignore[attr-defined]
        data = orjson.dumps(body)
    return data


async def hold(port: int, body: bytes, sent: asyncio.Event, stop: asyncio.Event, out: list[str]) -> None:
    """Send one request and keep its connection open until `stop`; record what came back meanwhile."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    path = b"/v1/chat/completions" if body.startswith(b'{"model":"sim","messages"') else b"/v1/completions"
    writer.write(
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (path, len(body))
    )
    writer.write(body)
    await writer.drain()
    sent.set()
    read = asyncio.ensure_future(reader.read(200))
    stopped = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if read in done:
        out.append(read.result()[:60].decode(errors="replace"))
    read.cancel()
    stopped.cancel()
    writer.close()


async def wave(port: int, bodies: list[bytes], pid: int, settle: float) -> tuple[float, list[str]]:
    """All bodies in flight at once; the gateway's peak RSS while they are held."""
    stop = asyncio.Event()
    out: list[str] = []
    events = [asyncio.Event() for _ in bodies]
    tasks = [asyncio.ensure_future(hold(port, b, e, stop, out)) for b, e in zip(bodies, events, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
    peak = 0.0
    until = time.monotonic() + settle
    while time.monotonic() < until:
        peak = max(peak, rss_mib(pid))
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks)
    return peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20, help="requests in flight at once")
    ap.add_argument("--shape", choices=["parts", "ids", "messages"], default="parts")
    ap.add_argument("--hold", type=float, default=8.0, help="seconds the requests are held in flight")
    ap.add_argument("--waves", type=int, default=2)
    ap.add_argument(
        "--kv-blocks", type=int, default=50_000, help="the simulator's KV cache, in 16-token blocks"
    )
    args = ap.parse_args()
    sim_port, gw_port = free_port(), free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "fleetgate", "sim", "--port", str(sim_port), "--startup-time", "0",
         "--served-model-name", "sim", "--fault-hang-rate", "1", "--max-model-len", str(args.kv_blocks * 16),
         "--num-gpu-blocks-override", str(args.kv_blocks)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    gw = subprocess.Popen(
        [sys.executable, "-m", "fleetgate", "gateway", "--upstream", f"http://127.0.0.1:{sim_port}",
         "--host", "127.0.0.1", "--port", str(gw_port), "--admin-port", str(free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/ready", gw, 60, every=0.2)
        wait_http(f"http://127.0.0.1:{gw_port}/v1/models", gw, 60, every=0.2)
        idle = rss_mib(gw.pid)
        for w in range(args.waves):
            bodies = [make_body(args.shape, w * args.requests + i) for i in range(args.requests)]
            raw = sum(len(b) for b in bodies) / 2**20
            peak, early = asyncio.run(wave(gw_port, bodies, gw.pid, args.hold))
            time.sleep(1.0)
            rows.append((w + 1, raw, peak, rss_mib(gw.pid), early))
    finally:
        gw.terminate()
        sim.terminate()
        gw.wait(30)
        sim.wait(30)
    print(f"shape {args.shape}, {args.requests} requests in flight, held {args.hold:g} s; gateway RSS idle "
          f"{idle:.0f} MiB")  # fmt: skip
    print("| wave | raw bytes in flight | RSS peak | peak - idle | (peak - idle) / raw | RSS after |")
    print("|---|---|---|---|---|---|")
    for w, raw, peak, after, early in rows:
        grown = peak - idle
        print(f"| {w} | {raw:.0f} MiB | {peak:.0f} MiB | {grown:.0f} MiB | {grown / raw:.1f}x | "
              f"{after:.0f} MiB |")  # fmt: skip
        if early:
            print(f"  ({len(early)} answered before the clients left, e.g. {early[0]!r})")


if __name__ == "__main__":
    main()
