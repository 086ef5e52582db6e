"""What tenancy costs: CPU per request added by auth + limits + ledger, beside the gateway without them.

Two parts, in one run:

1. In process: `Tenancy.admit` + `settle` + the ledger row for one request, timed per call (p50/p99 µs)
   with the limits in memory and in a real Redis (started here from the Debian `redis-server`).
2. End to end: a simulator (high `--time-scale`) behind the gateway in three set-ups, each driven by
   `fleetgate bench` at the same constant rates: no tenancy (a fleet-file key), tenancy in memory (an issued
   key in SQLite, key and tenant limits, budget, ledger) and tenancy with Redis. Reports the gateway's CPU
   seconds per request and the ratio to no tenancy.

LiteLLM's proxy is the natural peer (keys and budgets on the same simulator); it is not run here: it needs
its own PostgreSQL-backed setup and did not fit this machine's budget. `--litellm` is left for that run.

    python benchmarks/tenancy_cost.py --rates 300,1000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.services import redis_server

from fleetgate.admission.auth import Tenant
from fleetgate.config import parse_config
from fleetgate.tenancy.keys import KeyRecord, LimitSpec
from fleetgate.tenancy.rows import UsageRow
from fleetgate.tenancy.runtime import Tenancy, Usage
from procs import cpu_seconds, free_port, start_sim, wait_http

LIMITS = "{rpm: 100000000, tpm: 1000000000, concurrency: 100000, budget: {amount: 1.0e15, window: month}}"


def _quantiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[int(len(xs) * 0.99)]


async def _in_process(redis: str | None, n: int, db: str) -> tuple[float, float]:
    extra = f', redis: "{redis}"' if redis else ""
    cfg = parse_config(f"""
tenancy: {{database: "{db}", tenants: {{acme: {LIMITS}}}{extra}}}
pools: [{{name: p, models: [m], endpoints: ["http://127.0.0.1:9"]}}]
""")
    t = Tenancy(cfg)
    await t.start()
    key = KeyRecord(id="k1", tenant="acme", name="k", prefix="fg-", limits=LimitSpec(rpm=10**8, tpm=10**9))
    who = Tenant("acme", 0, key)
    times = []
    try:
        for i in range(n):
            start = time.perf_counter()
            ticket = await t.admit(who, "m", 400, 64)
            assert ticket is not None
            await t.settle(ticket, "m", Usage(100, 0, 64))
            t.record(UsageRow(time.time(), f"r{i}", "acme", "k1", "m", "p", "/v1/completions", 200,
                              100, 0, 64, 1.0))  # fmt: skip
            times.append((time.perf_counter() - start) * 1e6)
    finally:
        await t.stop()
    return _quantiles(times[n // 10 :])


def _gateway(config: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, admin = free_port(), free_port()
    path = tmp / f"fleet-{port}.yaml"
    path.write_text(config)
    cmd = [sys.executable, "-m", "fleetgate", "gateway", "--config", str(path), "--port", str(port),
           "--admin-port", str(admin)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc, port


def _bench(port: int, key: str, rate: int, duration: float, out: Path) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "fleetgate", "bench", "--url", url, "--model", "sim",
           "--api", "completions", "--token-ids", "--input-len", "16", "--output-len", "2",
           "--load", f"rate={rate}", "--duration", str(duration), "--warmup", "1", "--api-key", key,
           "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = json.loads((out / "results.json").read_text())["summary"]
    return {"requests": float(s.get("completed") or s.get("requests") or 0), "success": s["success_rate"],
            "rate": s["request_rate"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="300,1000")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--calls", type=int, default=20000, help="in-process calls per set-up")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, redis_server() as redis:
        tmp = Path(d)
        print("## in process: admit + settle + ledger row, per request")
        print("| limits | p50 µs | p99 µs |\n|---|---|---|")
        for name, url in (("memory", None), ("redis", redis)):
            p50, p99 = asyncio.run(_in_process(url, args.calls, f"sqlite:///{tmp}/in-{name}.db"))
            print(f"| {name} | {p50:.1f} | {p99:.1f} |")

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
        setups = {
            "no tenancy": (base, "sk-plain"),
            "memory": (base + f'tenancy: {{database: "{db}", tenants: {{acme: {LIMITS}}}}}\n', secret),
            "redis": (base + f'tenancy: {{database: "{db}", redis: "{redis}", '
                      f"tenants: {{acme: {LIMITS}}}}}\n", secret),
        }  # fmt: skip
        print("\n## end to end: gateway CPU per request")
        print("| rate | set-up | achieved req/s | success | CPU µs/request | ratio to no tenancy |")
        print("|---|---|---|---|---|---|")
        try:
            for rate in (int(r) for r in args.rates.split(",")):
                baseline = 0.0
                for name, (config, key) in setups.items():
                    proc, port = _gateway(config, tmp)
                    try:
                        before = cpu_seconds(proc.pid)
                        out = tmp / f"{name}-{rate}".replace(" ", "-")
                        r = _bench(port, key, rate, args.duration, out)
                        used = cpu_seconds(proc.pid) - before
                    finally:
                        proc.terminate()
                        proc.wait(30)
                    n = max(1.0, r["rate"] * (args.duration + 1))
                    per = used / n * 1e6
                    baseline = baseline or per
                    print(f"| {rate} | {name} | {r['rate']:.0f} | {r['success']:.3f} | {per:.0f} | "
                          f"{per / baseline:.2f} |")  # fmt: skip
        finally:
            sim.terminate()
            sim.wait(30)


if __name__ == "__main__":
    main()
