"""Routing quality on a simulated fleet: output throughput and TTFT per router, same simulators, same load.

Each run starts a fresh fleet of `--replicas` simulators (empty caches, KV events on), then one contender in
front of it, and drives it with `fleetgate bench` (Poisson arrivals, fixed request count and seed):

- round-robin, least-load, fleetgate approximate (text keys, no events), fleetgate precise (KV events and the
  simulator's tokenizer): fleetgate with different fleet files;
- oracle: benchmarks/oracle_router.py, which reads every simulator's true cache and queue state;
- peers given as `--peer NAME='COMMAND'` (`{port}` and `{upstreams}` filled in as in
  gateway_overhead.py), e.g.
  `--peer sglang='smg launch --port {port} --worker-urls {upstreams} --policy cache_aware'`.

    python benchmarks/routing.py --time-scale 10 --rates 2,4 --seeds 0 [--workload multi-turn] [--peer ...]

Rates are requests/s of simulated time (the offered rate is `rate * time_scale`); TTFTs are printed in
simulated seconds. Goodput is the share of requests whose TTFT met `--slo-ttft` (simulated seconds).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port, wait_http

HERE = Path(__file__).resolve().parent
MODEL = "llama-8b"
FLEETGATE = {
    "round-robin": "{picker: round_robin}",
    "least-load": "{scorers: {load: 1.0}}",
    "approximate": "{tokenizer: none}",
    "precise": "{tokenizer: builtin}",
}
WORKLOADS = {
    # llm-d's shape: 150 groups x 5 prompts, 6,000-token system prompt, 1,200-token question.
    "shared-prefix": ["--workload", "shared-prefix", "--groups", "150", "--prompts-per-group", "5",
                      "--system-len", "6000", "--question-len", "1200", "--output-len", "100"],
    "multi-turn": ["--workload", "multi-turn", "--turns", "6", "--sessions", "64",
                   "--input-len", "600", "--output-len", "100"],
}  # fmt: skip


def free_block(n: int) -> int:
    """The first of `n` consecutive free TCP ports (replicas take port, port + 1, ...)."""
    for _ in range(100):
        base = random.randrange(20000, 30000)
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit(f"no {n} consecutive free ports")


def start_fleet(
    n: int, port: int, kv_port: int, scale: float, profile: str, log: Path
) -> subprocess.Popen[bytes]:
    kv = json.dumps({"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{kv_port}",
                     "topic": "kv"})  # fmt: skip
    cmd = [sys.executable, "-m", "fleetgate", "sim", "--profile", profile, "--replicas", str(n),
           "--port", str(port), "--served-model-name", MODEL, "--startup-time", "0",
           "--time-scale", str(scale), "--kv-events-config", kv, "--admin"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    for i in range(n):
        wait_http(f"http://127.0.0.1:{port + i}/health", proc, 240)
    return proc


def fleet_file(path: Path, port: int, upstreams: list[str], kv_port: int, routing: str) -> None:
    precise = "builtin" in routing
    lines = [f"listen: {{host: 127.0.0.1, port: {port}}}", f"admin: {{host: 127.0.0.1, port: {free_port()}}}",
             "pools:", "  - name: main", f"    models: [{MODEL}]", "    endpoints:"]  # fmt: skip
    for i, u in enumerate(upstreams):
        kv = f", kv_events: 'tcp://127.0.0.1:{kv_port + i}'" if precise else ""
        lines.append(f"      - {{url: '{u}'{kv}}}")
    lines += [f"    routing: {routing}", "    limits: {max_tokens_cap: 100000, max_queue: 100000,"
              " max_queue_wait: 3600}", "    timeouts: {first_byte_stream: 3600, total: 7200}"]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def contender_command(name: str, port: int, upstreams: list[str], kv_port: int, tmp: Path,
                      peers: dict[str, str]) -> list[str]:  # fmt: skip
    if name in FLEETGATE:
        cfg = tmp / f"{name}.yaml"
        fleet_file(cfg, port, upstreams, kv_port, FLEETGATE[name])
        return [sys.executable, "-m", "fleetgate", "gateway", "--config", str(cfg)]
    if name == "oracle":
        return [sys.executable, str(HERE / "oracle_router.py"), "--port", str(port), *upstreams]
    out: list[str] = []
    for token in shlex.split(peers[name]):
        token = token.replace("{port}", str(port))
        out += upstreams if token == "{upstreams}" else [token.replace("{upstreams}", ",".join(upstreams))]
    return out


def run_one(
    args: argparse.Namespace, name: str, rate: float, seed: int, peers: dict[str, str]
) -> dict[str, float]:
    scale = args.time_scale
    port, kv_port, gw_port = free_block(args.replicas), free_block(args.replicas), free_port()
    fleet = start_fleet(args.replicas, port, kv_port, scale, args.profile, Path(args.log_dir) / "fleet.log")
    upstreams = [f"http://127.0.0.1:{port + i}" for i in range(args.replicas)]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        router = subprocess.Popen(contender_command(name, gw_port, upstreams, kv_port, tmp, peers),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{gw_port}/health", router, 60)
            time.sleep(1.0)  # health probes and the first scrapes settle before load starts
            out = tmp / "bench"
            cmd = [sys.executable, "-m", "fleetgate", "bench", "--url", f"http://127.0.0.1:{gw_port}/v1",
                   "--model", MODEL, "--api", "chat", *WORKLOADS[args.workload],
                   "--load", f"poisson={rate * scale}", "--num-requests", str(args.requests),
                   "--seed", str(seed), "--processes", "1", "--timeout", "3600",
                   "--slo", f"ttft={args.slo_ttft / scale}s", "--out", str(out)]  # fmt: skip
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            s = json.loads((out / "results.json").read_text())["summary"]
        finally:
            router.terminate()
            router.wait(30)
            fleet.terminate()
            fleet.wait(30)
    ttft = s.get("ttft", {})
    return {
        "out_tok_s": s["output_tok_s"] / scale,
        "ttft_p50": ttft.get("p50", float("nan")) * scale,
        "ttft_p90": ttft.get("p90", float("nan")) * scale,
        "goodput": s.get("slo_attainment", float("nan")),
        "success": s["success_rate"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--profile", default="h100-llama-3.1-8b")
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--rates", default="2", help="comma-separated request rates (simulated req/s)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; figures are medians over them")
    ap.add_argument("--requests", type=int, default=300, help="requests per run")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="shared-prefix")
    ap.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO for goodput, simulated seconds")
    ap.add_argument("--contenders", default="round-robin,least-load,approximate,precise,oracle")
    ap.add_argument("--peer", action="append", default=[], help="NAME='COMMAND with {port} and {upstreams}'")
    ap.add_argument("--log-dir", default=tempfile.gettempdir(), help="where the fleet's log goes")
    args = ap.parse_args()
    peers = dict(p.split("=", 1) for p in args.peer)
    names = [*args.contenders.split(","), *peers]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# {args.replicas} x {args.profile}, time scale {args.time_scale:g}, {args.workload}, "
          f"{args.requests} requests per run, seeds {seeds}; TTFT in simulated seconds")  # fmt: skip
    print(f"{'rate':>5} {'router':<14} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p90':>9} {'goodput':>8} "
          f"{'ok':>6}")  # fmt: skip
    for rate in (float(r) for r in args.rates.split(",")):
        rows: dict[str, dict[str, float]] = {}
        for name in names:
            runs = [run_one(args, name, rate, seed, peers) for seed in seeds]
            rows[name] = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
            r = rows[name]
            print(f"{rate:>5g} {name:<14} {r['out_tok_s']:>10.0f} {r['ttft_p50']:>9.3f} "
                  f"{r['ttft_p90']:>9.3f} {r['goodput']:>8.1%} {r['success']:>6.1%}", flush=True)  # fmt: skip
        if "round-robin" in rows:
            base = rows["round-robin"]
            for name, r in rows.items():
                if name != "round-robin":
                    gain = r["out_tok_s"] / base["out_tok_s"]
                    print(f"{rate:>5g} {name:<14} vs round-robin: throughput x{gain:.2f}, "
                          f"TTFT p90 /{base['ttft_p90'] / r['ttft_p90']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
