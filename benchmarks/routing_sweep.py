"""Routing when the KV cache is full: a sweep over cache size, rate, prefixes and prompt length (issue 18).

Every point starts a fresh fleet of `--replicas` simulators (empty caches, KV events on, each cache fixed with
`--num-gpu-blocks-override`), then one contender in front of it, and drives it with `fleetgate bench`
(shared-prefix chat, Poisson arrivals, fixed request count and seed). Contenders: round-robin, least-load,
fleetgate approximate (text keys, no events) and precise (the simulator's tokenizer and KV events): fleetgate
with different fleet files; peers given as `--peer NAME='COMMAND'` with `{port}` and `{upstreams}` filled
in, e.g.

    --fleetgate 'no-kv-gate={tokenizer: none, saturation: {max_kv_usage: 1.0}}'   # a variant's routing block
    --peer vllm-router='vllm-router --host 127.0.0.1 --port {port} --worker-urls {upstreams}
                        --policy cache_aware'
    --peer smg='smg launch --host 127.0.0.1 --port {port} --worker-urls {upstreams} --policy cache_aware'

The grid (each axis comma-separated):
- `--capacity`: each replica's KV cache as a multiple of its affinity share (the prefixes' tokens divided by
  the replicas: what each would hold if every prefix lived on one replica); `roomy` = 4x.
- `--rates`: multiples of round-robin's saturation rate (`--sat-rate`, simulated req/s).
- `--groups` (number of prefixes) and `--system-len` (prefix tokens).

Reported per point: TTFT p50/p90 (simulated seconds), goodput (share of requests with TTFT <= `--slo-ttft`),
the server-side prefix hit rate from the replicas' own counters (`vllm:prefix_cache_hits` / `queries`), and
for fleetgate which scorer decided the picks. `--timeline DIR` also writes, per run, one JSON line per second:
each replica's running, waiting, KV use and hit rate so far, and (fleetgate) the index's belief of how many
blocks each endpoint holds next to what the simulator holds. Medians over `--seeds`; `--out FILE` keeps
every run.

The defaults (time scale 0.1, 1x = 30 req/s) were measured on a 2-core machine: round-robin holds a TTFT
p90 of 0.12 s at 20 req/s and falls to 60% goodput at 40 req/s with 48 prefixes of 3,400 tokens.

    python benchmarks/routing_sweep.py --quick          # one tight point, round-robin vs the default
    python benchmarks/routing_sweep.py --seeds 0,1,2 --peer ...   # the full grid (hours on a 2-core box)
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port, wait_http
from routing import free_block

MODEL = "llama-8b"
BLOCK = 16
FLEETGATE = {
    "round-robin": "{picker: round_robin}",
    "least-load": "{scorers: {load: 1.0}}",
    "approximate": "{tokenizer: none}",
    "precise": "{tokenizer: builtin}",
}
GATEWAY_QUEUE = re.compile(
    rb"^(fleetgate_queue_depth|fleetgate_queue_wait_seconds_sum|fleetgate_queue_wait_seconds_count)"
    rb"\{[^}]*\} ([0-9.eE+-]+)$",
    re.M,
)
COUNTER = re.compile(rb"^(vllm:[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)
DECISION = re.compile(
    rb'^fleetgate_route_decisions_total\{[^}]*reason="([a-z_]+)"[^}]*\} ([0-9.eE+-]+)$', re.M
)


def counters(url: str) -> dict[str, float]:
    """vLLM's gauges and counters from one replica's /metrics (summed over label sets)."""
    out: dict[str, float] = {}
    for name, value in COUNTER.findall(httpx.get(f"{url}/metrics", timeout=5).content):
        key = name.decode()
        out[key] = out.get(key, 0.0) + float(value)
    return out


def hit_totals(upstreams: list[str]) -> tuple[float, float]:
    """Prefix-cache hits and queries summed over the replicas' own counters."""
    hits = queries = 0.0
    for u in upstreams:
        c = counters(u)
        hits += c.get("vllm:prefix_cache_hits_total", 0.0)
        queries += c.get("vllm:prefix_cache_queries_total", 0.0)
    return hits, queries


def decisions(admin: str) -> dict[str, float]:
    body = httpx.get(f"{admin}/metrics", timeout=5).content
    out: dict[str, float] = {}
    for reason, value in DECISION.findall(body):
        out[reason.decode()] = out.get(reason.decode(), 0.0) + float(value)
    return out


def gateway_queue(admin: str) -> dict[str, float]:
    """Requests held in fleetgate's flow queue now, and how many waited there so far and for how long."""
    body = httpx.get(f"{admin}/metrics", timeout=5).content
    out: dict[str, float] = {}
    for name, value in GATEWAY_QUEUE.findall(body):
        key = name.decode().removeprefix("fleetgate_")
        out[key] = out.get(key, 0.0) + float(value)
    return out


def start_fleet(
    args: argparse.Namespace, port: int, kv_port: int, blocks: int, log: Path
) -> subprocess.Popen[bytes]:
    kv = json.dumps({"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{kv_port}",
                     "topic": "kv"})  # fmt: skip
    cmd = [sys.executable, "-m", "fleetgate", "sim", "--profile", args.profile,
           "--replicas", str(args.replicas), "--port", str(port), "--served-model-name", MODEL,
           "--startup-time", "0",
           "--time-scale", str(args.time_scale), "--kv-events-config", kv, "--admin",
           "--num-gpu-blocks-override", str(blocks), "--max-model-len", str(args.max_model_len)]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    for i in range(args.replicas):
        wait_http(f"http://127.0.0.1:{port + i}/health", proc, 240)
    return proc


def fleet_file(
    path: Path, port: int, admin: int, upstreams: list[str], kv_port: int, routing: str, precise: bool
) -> None:
    """A fleet file for one contender; `precise` subscribes to each upstream's KV events at kv_port + i."""
    lines = [f"listen: {{host: 127.0.0.1, port: {port}}}", f"admin: {{host: 127.0.0.1, port: {admin}}}",
             "pools:", "  - name: main", f"    models: [{MODEL}]", "    endpoints:"]  # fmt: skip
    for i, u in enumerate(upstreams):
        kv = f", kv_events: 'tcp://127.0.0.1:{kv_port + i}'" if precise else ""
        lines.append(f"      - {{url: '{u}'{kv}}}")
    lines += [f"    routing: {routing}", "    limits: {max_tokens_cap: 100000, max_queue: 100000,"
              " max_queue_wait: 3600}", "    timeouts: {first_byte_stream: 3600, total: 7200}"]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def peer_command(template: str, port: int, upstreams: list[str]) -> list[str]:
    out: list[str] = []
    for token in shlex.split(template):
        token = token.replace("{port}", str(port))
        out += upstreams if token == "{upstreams}" else [token.replace("{upstreams}", ",".join(upstreams))]
    return out


def start_router(cmd: list[str], log: Path, port: int, seconds: float) -> subprocess.Popen[bytes]:
    """Start a contender and wait until it serves a model: peers may answer /health before they list their
    workers."""
    with log.open("ab") as out:
        router = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", router, seconds)
    except SystemExit:
        router.kill()
        raise
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return router


class Timeline(threading.Thread):
    """Samples the replicas (and fleetgate's admin view) once a second while a run lasts."""

    def __init__(self, upstreams: list[str], admin: str | None, path: Path) -> None:
        super().__init__(daemon=True)
        self.upstreams, self.admin, self.path = upstreams, admin, path
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        with self.path.open("w") as out:
            while not self.stop.wait(1.0):
                row: dict[str, Any] = {"t": round(time.monotonic() - start, 1), "replicas": []}
                try:
                    for u in self.upstreams:
                        c = counters(u)
                        state = httpx.get(f"{u}/_sim/state", timeout=5).json()
                        q = c.get("vllm:prefix_cache_queries_total", 0.0)
                        row["replicas"].append({
                            "running": c.get("vllm:num_requests_running", 0),
                            "waiting": c.get("vllm:num_requests_waiting", 0),
                            "kv": round(c.get("vllm:kv_cache_usage_perc", 0), 3),
                            "hit": round(c.get("vllm:prefix_cache_hits_total", 0.0) / q, 3) if q else None,
                            "cached_blocks": len(state.get("cached_block_hashes", ())),
                        })  # fmt: skip
                    if self.admin:
                        fleet = httpx.get(f"{self.admin}/admin/fleet", timeout=5).json()
                        pools = (
                            fleet["pools"]
                            if isinstance(fleet.get("pools"), list)
                            else list(fleet["pools"].values())
                        )
                        row["believed_blocks"] = [
                            e.get("precise_index_blocks", e.get("approx_index_blocks"))
                            for e in pools[0]["endpoints"]
                        ]
                        row["decisions"] = decisions(self.admin)
                        row["gateway_queue"] = gateway_queue(self.admin)
                except (httpx.HTTPError, KeyError, ValueError, TypeError, IndexError):
                    continue
                out.write(json.dumps(row) + "\n")
                out.flush()


def run_one(
    args: argparse.Namespace,
    point: dict[str, Any],
    name: str,
    seed: int,
    peers: dict[str, str],
    variants: dict[str, str],
) -> dict[str, Any]:
    routings = {**FLEETGATE, **variants}
    scale = args.time_scale
    port, kv_port, gw_port, admin_port = (
        free_block(args.replicas),
        free_block(args.replicas),
        free_port(),
        free_port(),
    )
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    fleet = start_fleet(args, port, kv_port, point["blocks"], log_dir / "fleet.log")
    upstreams = [f"http://127.0.0.1:{port + i}" for i in range(args.replicas)]
    admin = f"http://127.0.0.1:{admin_port}" if name in routings else None
    timeline: Timeline | None = None
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if name in routings:
            cfg = tmp / f"{name}.yaml"
            fleet_file(cfg, gw_port, admin_port, upstreams, kv_port, routings[name], name == "precise")
            cmd = [sys.executable, "-m", "fleetgate", "gateway", "--config", str(cfg)]
        else:
            cmd = peer_command(peers[name], gw_port, upstreams)
        router = start_router(cmd, log_dir / f"{name}.log", gw_port, 60)
        try:
            time.sleep(1.0)  # health probes and the first scrapes settle before load starts
            if args.timeline:
                tag = (f"{name}-c{point['capacity']}-r{point['rate']}-g{point['groups']}"
                       f"-s{point['system_len']}-seed{seed}")  # fmt: skip
                timeline = Timeline(upstreams, admin, Path(args.timeline) / f"{tag}.jsonl")
                timeline.start()
            out_dir = tmp / "bench"
            rate = point["rate_rps"] * scale
            cmd = [sys.executable, "-m", "fleetgate", "bench", "--url", f"http://127.0.0.1:{gw_port}/v1",
                   "--model", MODEL, "--api", "chat", "--workload", "shared-prefix",
                   "--groups", str(point["groups"]), "--prompts-per-group", str(args.prompts_per_group),
                   "--system-len", str(point["system_len"]), "--question-len", str(args.question_len),
                   "--output-len", str(args.output_len), "--load", f"poisson={rate}",
                   "--num-requests", str(point["requests"]), "--seed", str(seed), "--processes", "1",
                   "--timeout", "3600", "--slo", f"ttft={args.slo_ttft / scale}s",
                   "--out", str(out_dir)]  # fmt: skip
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            s = json.loads((out_dir / "results.json").read_text())["summary"]
            if args.timeline:  # every request's timings next to the timeline, for the analysis after
                shutil.copyfile(out_dir / "results.json", Path(args.timeline) / f"{tag}.results.json")
            hits, queries = hit_totals(upstreams)
            decided = decisions(admin) if admin else {}
        finally:
            if timeline is not None:
                timeline.stop.set()
                timeline.join(5)
            router.terminate()
            router.wait(30)
            fleet.terminate()
            fleet.wait(30)
    ttft = s.get("ttft", {})
    total = sum(decided.values()) or 1.0
    return {
        "ttft_p50": ttft.get("p50", float("nan")) * scale,
        "ttft_p90": ttft.get("p90", float("nan")) * scale,
        "goodput": s.get("slo_attainment", float("nan")),
        "success": s["success_rate"],
        "hit": hits / queries if queries else float("nan"),
        "decided": " ".join(
            f"{k}:{v / total:.0%}" for k, v in sorted(decided.items(), key=lambda kv: -kv[1])
        ),
    }


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    points = []
    for groups in (int(g) for g in args.groups.split(",")):
        for system_len in (int(x) for x in args.system_len.split(",")):
            share_tokens = groups * system_len / args.replicas
            for cap in args.capacity.split(","):
                factor = 4.0 if cap == "roomy" else float(cap)
                blocks = max(64, int(factor * share_tokens / BLOCK))
                for rate in (float(r) for r in args.rates.split(",")):
                    requests = args.requests or groups * args.prompts_per_group
                    points.append({"groups": groups, "system_len": system_len, "capacity": cap,
                                   "blocks": blocks, "rate": rate, "rate_rps": rate * args.sat_rate,
                                   "requests": requests})  # fmt: skip
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--profile", default="h100-llama-3.1-8b")
    ap.add_argument(
        "--time-scale", type=float, default=0.1, help="the simulators' K (all times divided by K)"
    )
    ap.add_argument(
        "--capacity", default="roomy,1.0,0.9,0.7,0.5", help="KV cache per replica / affinity share"
    )
    ap.add_argument(
        "--sat-rate", type=float, default=30.0, help="round-robin's saturation rate, simulated req/s"
    )
    ap.add_argument("--rates", default="0.5,1,1.5,2", help="multiples of --sat-rate")
    ap.add_argument("--groups", default="48", help="numbers of prefixes (system prompts)")
    ap.add_argument("--system-len", default="3400", help="prefix lengths in tokens")
    ap.add_argument("--prompts-per-group", type=int, default=6)
    ap.add_argument("--question-len", type=int, default=200)
    ap.add_argument("--max-model-len", type=int, default=8192, help="fits the smallest cache of the grid")
    ap.add_argument("--output-len", type=int, default=50)
    ap.add_argument(
        "--requests", type=int, default=0, help="requests per run (0: one pass, groups x prompts)"
    )
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; figures are medians over them")
    ap.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO for goodput, simulated seconds")
    ap.add_argument("--contenders", default="round-robin,least-load,approximate,precise")
    ap.add_argument("--peer", action="append", default=[], help="NAME='COMMAND with {port} and {upstreams}'")
    ap.add_argument(
        "--fleetgate", action="append", default=[], help="NAME='ROUTING' a fleetgate variant's routing block"
    )
    ap.add_argument("--timeline", default="", help="directory for per-run timelines (JSON lines)")
    ap.add_argument("--log-dir", default=str(Path(tempfile.gettempdir()) / "routing-sweep"))
    ap.add_argument("--out", type=Path, help="append one JSON line per run (point, router, seed, figures)")
    ap.add_argument("--quick", action="store_true", help="one tight point (0.9x share, 1x rate), one seed")
    args = ap.parse_args()
    if args.quick:
        args.capacity, args.rates, args.seeds = "0.9", "1", "0"
        args.contenders = "round-robin,approximate"
    peers = dict(p.split("=", 1) for p in args.peer)
    variants = dict(v.split("=", 1) for v in args.fleetgate)
    # A variant or peer also named in --contenders runs once, in the --contenders order.
    names = list(dict.fromkeys([*args.contenders.split(","), *variants, *peers]))
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.timeline:
        Path(args.timeline).mkdir(parents=True, exist_ok=True)
    print(f"# {args.replicas} x {args.profile}, time scale {args.time_scale:g}, shared-prefix chat x "
          f"{args.prompts_per_group} prompts per prefix, question {args.question_len}, "
          f"output {args.output_len}, 1x rate = {args.sat_rate:g} req/s, seeds {seeds}; "
          "TTFT in simulated seconds, median of seeds")  # fmt: skip
    print("| prefixes | prefix tok | KV/share (blocks) | rate | router | TTFT p50 | TTFT p90 | goodput "
          "| hit rate | decided by |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for point in grid(args):
        for name in names:
            runs = []
            for seed in seeds:
                runs.append(run_one(args, point, name, seed, peers, variants))
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps({**point, "router": name, "seed": seed, **runs[-1]}) + "\n")
            med = {
                k: statistics.median(r[k] for r in runs) for k in ("ttft_p50", "ttft_p90", "goodput", "hit")
            }
            print(f"| {point['groups']} | {point['system_len']} | {point['capacity']} ({point['blocks']}) | "
                  f"{point['rate']:g}x | {name} | {med['ttft_p50']:.2f} | {med['ttft_p90']:.2f} | "
                  f"{med['goodput']:.0%} | {med['hit']:.2f} | {runs[len(runs) // 2]['decided']} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
