"""What tenancy costs: CPU per request added by auth + limits + ledger, beside the gateway without them.

Two parts, in one run:

1. In process: `Tenancy.admit` + `settle` + the ledger row for one request, timed per call (p50/p99 µs) with
   one caller and with 32 at once, with the limits in memory and in a real Redis (started here from the
   Debian `redis-server`), with this process's CPU per request and a plain Redis PING as the floor.
2. End to end: a simulator (high `--time-scale`) behind the gateway in three set-ups, each driven by
   `fleetgate bench` at the same constant rates after 50 warm-up requests: no tenancy (a fleet-file key),
   tenancy in memory (an issued key in SQLite, key and tenant limits, budget, ledger) and tenancy with Redis.
   Reports the gateway's CPU per request sent, the ratio to the first set-up, and what failed requests got
   (`--keep DIR` keeps each run's results.json and the gateway's log).

`--litellm CMD` adds LiteLLM's proxy as the peer, started by the command given (never installed here;
`{config}` and `{port}` are filled in), with a config that points one model at the simulator and a master
key. Its keys-and-budgets set-up needs a database through Prisma, whose engines are downloaded at `prisma
generate`; where that cannot run, the master key alone is the nearest peer (docs/benchmarks.md says what that
compares).

    python benchmarks/tenancy_cost.py --rates 300,1000 --duration 10
    python benchmarks/tenancy_cost.py --rates 20 --api chat --calls 0 \
        --litellm '/tmp/lvenv/bin/litellm --config {config} --port {port}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx
from tests.services import redis_server

from fleetgate.admission.auth import Tenant
from fleetgate.config import parse_config
from fleetgate.tenancy.keys import KeyRecord, LimitSpec
from fleetgate.tenancy.rows import UsageRow
from fleetgate.tenancy.runtime import Tenancy, Usage
from procs import free_port, start_sim, tree_cpu, wait_http

LIMITS = "{rpm: 100000000, tpm: 1000000000, concurrency: 100000, budget: {amount: 1.0e15, window: month}}"


def _quantiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[int(len(xs) * 0.99)]


async def _in_process(redis: str | None, n: int, db: str, width: int) -> tuple[float, float, float]:
    """`width` callers at once, each running requests one after another: p50 and p99 µs of one request
    (admit + settle + ledger row, as the gateway awaits them) and this process's CPU µs per request
    (background sends included)."""
    extra = f', redis: "{redis}"' if redis else ""
    cfg = parse_config(f"""
tenancy: {{database: "{db}", tenants: {{acme: {LIMITS}}}{extra}}}
pools: [{{name: p, models: [m], endpoints: ["http://127.0.0.1:9"]}}]
""")
    t = Tenancy(cfg)
    await t.start()
    key = KeyRecord(id="k1", tenant="acme", name="k", prefix="fg-", limits=LimitSpec(rpm=10**8, tpm=10**9))
    who = Tenant("acme", 0, key)
    times: list[float] = []

    async def caller(c: int) -> None:
        for i in range(n // width):
            start = time.perf_counter()
            ticket = await t.admit(who, "m", 400, 64)
            assert ticket is not None
            await t.settle(ticket, "m", Usage(100, 0, 64))
            t.record(UsageRow(time.time(), f"r{c}-{i}", "acme", "k1", "m", "p", "/v1/completions", 200,
                              100, 0, 64, 1.0))  # fmt: skip
            if i >= n // width // 10:  # the first tenth warms up (connections, scripts loaded)
                times.append((time.perf_counter() - start) * 1e6)

    cpu = time.process_time()
    try:
        await asyncio.gather(*(caller(c) for c in range(width)))
    finally:
        await t.stop()  # sends what is still queued: its CPU counts
    p50, p99 = _quantiles(times)
    return p50, p99, (time.process_time() - cpu) / n * 1e6


async def _ping(redis: str, n: int) -> tuple[float, float, float]:
    """The floor: one PING round trip with the same client library, one caller."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis)
    times: list[float] = []
    cpu = time.process_time()
    try:
        for i in range(n):
            start = time.perf_counter()
            await client.ping()
            if i >= n // 10:
                times.append((time.perf_counter() - start) * 1e6)
    finally:
        await client.aclose()
    p50, p99 = _quantiles(times)
    return p50, p99, (time.process_time() - cpu) / n * 1e6


@dataclass(frozen=True)
class Setup:
    """A contender in front of the simulator: how to start it (process, port), the key to call it with."""

    name: str
    start: Callable[[Path], tuple[subprocess.Popen[bytes], int]]
    key: str


def _gateway(config: str) -> Callable[[Path], tuple[subprocess.Popen[bytes], int]]:
    def start(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
        port, admin = free_port(), free_port()
        path = tmp / f"fleet-{port}.yaml"
        path.write_text(config)
        cmd = [sys.executable, "-m", "fleetgate", "gateway", "--config", str(path), "--port", str(port),
               "--admin-port", str(admin)]  # fmt: skip
        with open(tmp / f"gateway-{port}.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        return proc, port

    return start


LITELLM_CONFIG = """model_list:
  - model_name: sim
    litellm_params: {{model: "openai/sim", api_base: "http://127.0.0.1:{sim}/v1", api_key: "none"}}
general_settings: {{master_key: "{key}"}}
"""


def _litellm(command: str, sim_port: int, key: str) -> Callable[[Path], tuple[subprocess.Popen[bytes], int]]:
    """LiteLLM's proxy as the peer, started by the command given (never installed here), with a config that
    points one model at the simulator and a master key (no database: see the module's docstring)."""

    def start(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        config = tmp / f"litellm-{port}.yaml"
        config.write_text(LITELLM_CONFIG.format(sim=sim_port, key=key))
        cmd = [t.replace("{config}", str(config)).replace("{port}", str(port)) for t in shlex.split(command)]
        # The proxy fetches its price map from GitHub at start unless told to use its packaged copy.
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        with open(tmp / f"litellm-{port}.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, seconds=120)
        return proc, port

    return start


@dataclass(frozen=True)
class Outcome:
    requests: int  # sent, warm-up included (all of them cost the contender CPU)
    success: float
    rate: float
    failures: str  # what the failed requests got, e.g. "429 RateLimitError: pool 'p' is saturated... x12"


def _warm(port: int, key: str, api: str, n: int = 50) -> None:
    """A few requests before the count starts: first-call costs (lazy imports, connections, scripts
    loaded) are not per-request costs, and a peer that has more of them must not pay them in the count."""
    url = f"http://127.0.0.1:{port}/v1/" + ("completions" if api == "completions" else "chat/completions")
    body: dict[str, object] = {"model": "sim", "max_tokens": 2}
    body.update(
        {"prompt": [1, 2, 3, 4]}
        if api == "completions"
        else {"messages": [{"role": "user", "content": "hi"}]}
    )
    with httpx.Client(timeout=60, headers={"authorization": f"Bearer {key}"}) as c:
        for _ in range(n):
            c.post(url, json=body).raise_for_status()


def _bench(port: int, key: str, rate: int, duration: float, api: str, out: Path) -> Outcome:
    url = f"http://127.0.0.1:{port}/v1"
    shape = ["--api", api, *(["--token-ids"] if api == "completions" else [])]
    cmd = [sys.executable, "-m", "fleetgate", "bench", "--url", url, "--model", "sim", *shape,
           "--input-len", "16", "--output-len", "2", "--load", f"rate={rate}", "--duration", str(duration),
           "--warmup", "1", "--api-key", key, "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = json.loads((out / "results.json").read_text())
    failed = Counter(
        f"{r['status'] or 'no response'} {r['error']}: {(r['error_message'] or '')[:60]}"
        for r in res["requests"]
        if r["status"] != 200 or r["error"] is not None
    )
    s = res["summary"]
    text = "; ".join(f"{what} x{n}" for what, n in failed.most_common(3)) or "none"
    return Outcome(len(res["requests"]), s["success_rate"], s["request_rate"], text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="300,1000")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--calls", type=int, default=20000, help="in-process calls per set-up (0: skip part 1)")
    ap.add_argument("--setups", default="no tenancy,memory,redis", help="fleetgate set-ups to run, in order")
    ap.add_argument("--api", choices=["completions", "chat"], default="completions")
    ap.add_argument("--litellm", metavar="CMD", help="LiteLLM proxy's command with {config} and {port}, e.g. "
                    "'/tmp/lvenv/bin/litellm --config {config} --port {port}'")  # fmt: skip
    ap.add_argument("--keep", type=Path, help="keep the runs' results.json and server logs in this folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, redis_server() as redis:
        tmp = args.keep or Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        if args.calls:
            print("## in process: admit + settle + ledger row, per request")
            print("| limits | callers at once | p50 µs | p99 µs | CPU µs/request |\n|---|---|---|---|---|")
            for name, url, width in (("memory", None, 1), ("redis", redis, 1), ("memory", None, 32),
                                     ("redis", redis, 32)):  # fmt: skip
                db = f"sqlite:///{tmp}/in-{name}-{width}.db"
                p50, p99, cpu = asyncio.run(_in_process(url, args.calls, db, width))
                print(f"| {name} | {width} | {p50:.1f} | {p99:.1f} | {cpu:.1f} |")
            p50, p99, cpu = asyncio.run(_ping(redis, args.calls))
            print(f"| (Redis PING alone: the floor) | 1 | {p50:.1f} | {p99:.1f} | {cpu:.1f} |")

        sim_port = free_port()
        sim = start_sim(sim_port, "--time-scale", "1000", "--max-num-seqs", "1024")
        base = f"""
keys: [{{name: plain, key: sk-plain}}]
pools: [{{name: p, models: [sim], endpoints: ["http://127.0.0.1:{sim_port}"]}}]
"""
        db = f"sqlite:///{tmp}/gw.db"
        from fleetgate.tenancy.commands import create_key
        from fleetgate.tenancy.requests import KeyRequest

        _, secret = create_key(db, KeyRequest(tenant="acme", rpm=10**8, tpm=10**9, concurrency=10**5))
        tenancy = f'tenancy: {{database: "{db}", tenants: {{acme: {LIMITS}}}}}\n'
        shared = f'tenancy: {{database: "{db}", redis: "{redis}", tenants: {{acme: {LIMITS}}}}}\n'
        known = {
            "no tenancy": Setup("no tenancy", _gateway(base), "sk-plain"),
            "memory": Setup("memory", _gateway(base + tenancy), secret),
            "redis": Setup("redis", _gateway(base + shared), secret),
        }
        setups = [known[n.strip()] for n in args.setups.split(",") if n.strip()]
        if args.litellm:
            setups.append(
                Setup("litellm (master key)", _litellm(args.litellm, sim_port, "sk-litellm"), "sk-litellm")
            )
        print("\n## end to end: CPU per request of the gateway (or the peer's process tree)")
        print(
            "| rate | set-up | achieved req/s | success | CPU µs/request | ratio to first | failed requests |"
        )
        print("|---|---|---|---|---|---|---|")
        try:
            for rate in (int(r) for r in args.rates.split(",")):
                baseline = 0.0
                for setup in setups:
                    proc, port = setup.start(tmp)
                    try:
                        _warm(port, setup.key, args.api)
                        before = tree_cpu(proc.pid)
                        out = tmp / f"{setup.name.split()[0]}-{rate}"
                        r = _bench(port, setup.key, rate, args.duration, args.api, out)
                        used = tree_cpu(proc.pid) - before
                    finally:
                        proc.terminate()
                        proc.wait(30)
                    per = used / max(1, r.requests) * 1e6
                    baseline = baseline or per
                    print(f"| {rate} | {setup.name} | {r.rate:.0f} | {r.success:.3f} | {per:.0f} | "
                          f"{per / baseline:.2f} | {r.failures} |")  # fmt: skip
        finally:
            sim.terminate()
            sim.wait(30)


if __name__ == "__main__":
    main()
