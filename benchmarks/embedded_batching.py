"""What continuous batching buys the embedded engine: output tokens/s at concurrency 1, 8 and 32, batched
(`--max-num-seqs 32`) against one sequence at a time (`--max-num-seqs 1`), on the demo model or any other.

Starts `python -m fleetgate.engines.embedded` as a child process for each mode, waits for its `phase=ready`
line, drives it with a minimal asyncio HTTP/1.1 client (streamed chat completions, `ignore_eos`, usage read
from the last chunk) and reads the engine's CPU time from /proc.

    python benchmarks/embedded_batching.py                      # the demo model, made on first run
    python benchmarks/embedded_batching.py --model DIR --device cuda --max-tokens 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

from procs import cpu_seconds, free_port

PROMPT = "Plan two days in Tainan: temples in the morning, food at night, and a slow walk by the old harbor."


@dataclass
class Level:
    mode: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    cpu: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def one_request(port: int, body: bytes) -> int:
    """Stream one chat completion; the completion tokens its usage chunk reports."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n")
    writer.write(b"content-length: %d\r\n\r\n%s" % (len(body), body))
    stream = await reader.readuntil(b"data: [DONE]")
    writer.close()
    usage = stream.rsplit(b'"usage":', 1)[1].split(b"}", 1)[0] + b"}"
    return int(json.loads(usage)["completion_tokens"])


async def drive(port: int, concurrency: int, requests: int, body: bytes) -> int:
    left = requests
    total = 0

    async def worker() -> None:
        nonlocal left, total
        while left > 0:
            left -= 1
            tokens = await one_request(port, body)
            total += tokens

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total


def start_engine(args: argparse.Namespace, max_num_seqs: int) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "fleetgate.engines.embedded",
        "--port",
        str(port),
        "--served-model-name",
        "m",
    ]
    cmd += ["--model", args.model] if args.model else ["--demo"]
    cmd += ["--max-num-seqs", str(max_num_seqs), "--device", args.device]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "phase=ready" in line:
            return proc, port
        if "phase=error" in line:
            break
    proc.kill()
    raise SystemExit(f"the engine did not start: {' '.join(cmd)}")


def run_mode(args: argparse.Namespace, mode: str, max_num_seqs: int) -> list[Level]:
    proc, port = start_engine(args, max_num_seqs)
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    out = []
    try:
        asyncio.run(drive(port, 4, 8, body))  # warm-up: first-call costs, allocator
        for c in args.concurrency:
            runs = []
            for _ in range(args.runs):
                requests = max(args.rounds * c, args.min_requests)
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                tokens = asyncio.run(drive(port, c, requests, body))
                seconds = time.perf_counter() - t0
                runs.append(Level(mode, c, requests, tokens, seconds, cpu_seconds(proc.pid) - cpu0))
                print(f"  {mode:>14} c={c:<3} {tokens / seconds:8.1f} tok/s", file=sys.stderr, flush=True)
            out.append(sorted(runs, key=lambda lv: lv.tokens_per_s)[len(runs) // 2])
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory (default: the demo model)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=3, help="requests per level = rounds x concurrency")
    p.add_argument("--min-requests", type=int, default=8)
    p.add_argument("--runs", type=int, default=3, help="runs per level; the median run is reported")
    args = p.parse_args()
    batched = run_mode(args, "batched", max(32, *args.concurrency))
    single = run_mode(args, "one-at-a-time", 1)
    base = batched[0].tokens_per_s
    print(f"machine: {_cpu()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"command: python {' '.join(sys.argv)}  (median of {args.runs} runs per row)")
    print(
        "| mode | concurrency | requests | output tokens | seconds | output tok/s | vs batched c=1 |", end=""
    )
    print(" engine CPU ms / token |\n|---|---|---|---|---|---|---|---|")
    for lv in batched + single:
        print(
            f"| {lv.mode} | {lv.concurrency} | {lv.requests} | {lv.tokens:,} | {lv.seconds:.2f} | "
            f"{lv.tokens_per_s:,.0f} | {lv.tokens_per_s / base:.2f}x | {1000 * lv.cpu / lv.tokens:.2f} |"
        )
    for b, s in zip(batched, single, strict=True):
        print(f"batching gain at concurrency {b.concurrency}: {b.tokens_per_s / s.tokens_per_s:.2f}x")


if __name__ == "__main__":
    main()
