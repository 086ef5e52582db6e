"""Reliability under faults: streams through a real gateway while simulators (or a real vLLM) are killed,
frozen and restarted, clients leave, the gateway drains on SIGTERM and slowloris clients hold sockets.

Each scenario reports how many streams were tried, how many failed before their first token, were cut
mid-stream with an error event or silently, or hung, and how many upstream requests were still running 1 s
after their clients left. Targets (issue 11): 0 failures before the first token, 0 silent cuts, 0 hangs,
0 upstream requests left running, 0 streams dropped on SIGTERM within drain_timeout.

    python benchmarks/chaos.py                       # every scenario on simulators
    python benchmarks/chaos.py --streams 200 --only disconnect \
        --upstream http://127.0.0.1:8000 --model llama-8b
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL = "llama-8b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes] | None, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {within:g} s")


def running(url: str) -> float:
    """Requests the engine is working on (running + waiting), from its own /metrics."""
    total = 0.0
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                total += s.value
    return total


@dataclass
class Sim:
    port: int
    flags: tuple[str, ...]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "fleetgate", "sim", "--port", str(self.port), "--startup-time", "0",
               "--served-model-name", MODEL, *self.flags]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/health", self.proc)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@dataclass
class Gateway:
    urls: list[str]
    workdir: Path
    extra: str = ""
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.workdir / f"fleet-{self.port}.yaml"
        config.write_text(f"""
listen: {{host: 127.0.0.1, port: {self.port}}}
admin: {{host: 127.0.0.1, port: {self.admin_port}}}
log: {{level: warning}}
{self.extra}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{", ".join(self.urls)}]
    health: {{interval: 0.5, timeout: 1}}
    timeouts: {{first_byte_stream: 60, stall_after: 3}}
""")
        log = (self.workdir / f"gateway-{self.port}.log").open("ab")
        cmd = [sys.executable, "-m", "fleetgate", "gateway", "--config", str(config)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/ready", self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---- one stream, classified ------------------------------------------------------------------------
async def stream(
    client: httpx.AsyncClient, url: str, max_tokens: int, leave_after_first: bool = False
) -> str:
    """ok | failed_before_first_token | cut_with_error | cut_silently | hung | left."""
    body = {"model": MODEL, "prompt": "chaos", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    first = False
    last = ""
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            if r.status_code != 200:
                return "failed_before_first_token"
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line != "data: [DONE]" and '"error"' not in line:
                    first = True
                    if leave_after_first:
                        return "left"
                if line == "data: [DONE]":
                    return (
                        "ok"
                        if '"error"' not in last
                        else ("cut_with_error" if first else "failed_before_first_token")
                    )
                last = line
    except httpx.TimeoutException:
        return "hung"
    except httpx.HTTPError:
        pass
    return "cut_silently" if first else "failed_before_first_token"


async def run_streams(
    url: str,
    n: int,
    max_tokens: int,
    during: Callable[[], Awaitable[None]] | None = None,
    spread: float = 0.0,
) -> Counter[str]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120, read=60)) as client:

        async def delayed(i: int) -> str:
            await asyncio.sleep(spread * i / max(1, n))
            return await stream(client, url, max_tokens)

        tasks = [asyncio.create_task(delayed(i)) for i in range(n)]
        if during is not None:
            await during()
        return Counter(await asyncio.gather(*tasks))


# ---- scenarios ---------------------------------------------------------------------------------------
def disconnect(args: argparse.Namespace, work: Path) -> dict[str, float]:
    sims: list[Sim] = []
    targets = [args.upstream] if args.upstream else []
    if not targets:
        sims = [Sim(free_port(), ("--time-scale", "1"), work / "sim-d.log")]
        sims[0].start()
        targets = [sims[0].url]
    gw = Gateway(targets, work)
    gw.start()
    try:

        async def go() -> Counter[str]:
            limits = httpx.Limits(max_connections=args.streams + 10, max_keepalive_connections=0)
            async with httpx.AsyncClient(limits=limits, timeout=120) as client:
                jobs = [stream(client, gw.url, 4000, leave_after_first=True) for _ in range(args.streams)]
                return Counter(await asyncio.gather(*jobs))

        outcome = asyncio.run(go())
        left_at = time.monotonic()
        time.sleep(1.0)
        still = running(targets[0])
        deadline = time.monotonic() + 30
        while running(targets[0]) > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"tried": args.streams, "left": outcome["left"], "upstream_running_1s_after": still,
                "seconds_to_idle": round(time.monotonic() - left_at, 3)}  # fmt: skip
    finally:
        gw.stop()
        for s in sims:
            s.stop()


def upstream_fault(args: argparse.Namespace, work: Path, fault: str) -> dict[str, float]:
    sims = [
        Sim(free_port(), ("--time-scale", "10", "--seed", str(i)), work / f"sim-{fault}-{i}.log")
        for i in range(3)
    ]
    for s in sims:
        s.start()
    gw = Gateway([s.url for s in sims], work)
    gw.start()
    victim = sims[0]

    async def act() -> None:
        await asyncio.sleep(1.0)
        if fault == "kill9":
            victim.signal(signal.SIGKILL)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(victim.start)  # restarted on the same port
        else:
            victim.signal(signal.SIGSTOP)
            await asyncio.sleep(args.freeze)
            victim.signal(signal.SIGCONT)

    try:
        outcome = asyncio.run(run_streams(gw.url, args.streams, 400, act, spread=args.freeze + 3))
        return {"tried": args.streams, **{k: float(v) for k, v in outcome.items()}}
    finally:
        gw.stop()
        for s in sims:
            s.stop()


def drain(args: argparse.Namespace, work: Path) -> dict[str, float]:
    sim = Sim(free_port(), ("--time-scale", "5"), work / "sim-drain.log")
    sim.start()
    gw = Gateway([sim.url], work, extra="shutdown: {pre_stop_delay: 1, drain_timeout: 60}")
    gw.start()

    async def term() -> None:
        deadline = time.monotonic() + 20
        while running(sim.url) < args.streams * 0.9 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)

    try:
        outcome = asyncio.run(run_streams(gw.url, args.streams, 2000, term))
        assert gw.proc is not None
        return {"tried": args.streams, **{k: float(v) for k, v in outcome.items()}, "exit": gw.proc.wait(90)}
    finally:
        gw.stop()
        sim.stop()


def slowloris(args: argparse.Namespace, work: Path) -> dict[str, float]:
    sim = Sim(free_port(), ("--time-scale", "20"), work / "sim-slow.log")
    sim.start()
    gw = Gateway([sim.url], work, extra="")
    gw.start()
    held: list[socket.socket] = []
    try:
        for _ in range(args.sockets):
            with contextlib.suppress(OSError):
                s = socket.create_connection(("127.0.0.1", gw.port))
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
                held.append(s)
        outcome = asyncio.run(run_streams(gw.url, 20, 20))
        admin = httpx.get(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=5).status_code
        return {"idle_sockets": len(held), "tried": 20, **{k: float(v) for k, v in outcome.items()},
                "admin_status": admin}  # fmt: skip
    finally:
        for s in held:
            s.close()
        gw.stop()
        sim.stop()


SCENARIOS = {
    "disconnect": disconnect,
    "kill9": lambda a, w: upstream_fault(a, w, "kill9"),
    "sigstop": lambda a, w: upstream_fault(a, w, "sigstop"),
    "drain": drain,
    "slowloris": slowloris,
}


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=100, help="Concurrent streams per scenario.")
    parser.add_argument("--freeze", type=float, default=10.0, help="Seconds a simulator stays SIGSTOPped.")
    parser.add_argument("--sockets", type=int, default=500, help="Idle sockets the slowloris scenario opens.")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="Run only these.")
    parser.add_argument("--upstream", help="A real vLLM URL for the disconnect scenario (else a simulator).")
    parser.add_argument("--model", default=MODEL, help="Its served model name.")
    args = parser.parse_args()
    MODEL = args.model
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.only or list(SCENARIOS):
            t0 = time.monotonic()
            result = SCENARIOS[name](args, Path(d))
            result["wall_s"] = round(time.monotonic() - t0, 1)
            rows.append((name, result))
            print(f"{name:<11} " + "  ".join(f"{k}={v:g}" for k, v in result.items()), flush=True)
    bad = sum(
        r.get(k, 0) for _, r in rows for k in ("failed_before_first_token", "cut_silently", "hung")
    ) + sum(r.get("upstream_running_1s_after", 0) for _, r in rows)
    print(f"\ntargets missed: {bad:g} (failed before first token, silent cuts, hangs, upstream left running)")
    os._exit(1 if bad else 0)


if __name__ == "__main__":
    main()
