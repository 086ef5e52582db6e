"""Routing on real vLLM servers that are already running (issue 18's two real points; see
benchmarks/routing_real_vllm.sh, which starts them on the lent GPU and calls this).

For each contender in turn: the servers' prefix caches are reset (`POST /reset_prefix_cache`, vLLM's dev
mode) and left idle, the contender starts in front of them, and `fleetgate bench` drives the same
shared-prefix chat at the same Poisson rate with the same seed. Contenders are fleetgate with the fleet
files of benchmarks/routing_sweep.py (round-robin, least-load, approximate, precise: KV events and the
model's own tokenizer) and peers given as `--peer NAME='COMMAND'` with `{port}` and `{upstreams}`.

    python benchmarks/routing_real_vllm.py --upstreams http://127.0.0.1:8000,... --kv-port 5600 \\
        --tokenizer /tmp/model --rate 25 --label tight [--peer vllm-router='vllm-router ...']

Reported per contender: TTFT p50/p90 and goodput (TTFT <= --slo-ttft), the servers' own prefix-cache hit
rate over the run (vllm:prefix_cache_hits / queries, summed), and for fleetgate which scorer decided.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port
from routing_sweep import (
    FLEETGATE,
    MODEL,
    counters,
    decisions,
    fleet_file,
    hit_totals,
    peer_command,
    start_router,
)


def settle(upstreams: list[str], seconds: float = 120) -> None:
    """Empty every server's prefix cache and wait until none has a request running or waiting."""
    for u in upstreams:
        httpx.post(f"{u}/reset_prefix_cache", timeout=30).raise_for_status()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        busy = sum(
            c.get("vllm:num_requests_running", 0.0) + c.get("vllm:num_requests_waiting", 0.0)
            for c in (counters(u) for u in upstreams)
        )
        if busy == 0:
            return
        time.sleep(0.5)
    raise SystemExit("the servers did not go idle")


def run_one(
    args: argparse.Namespace, name: str, upstreams: list[str], peers: dict[str, str]
) -> dict[str, Any]:
    settle(upstreams)
    hits0, queries0 = hit_totals(upstreams)
    gw_port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}" if name in FLEETGATE else None
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if name in FLEETGATE:
            routing = FLEETGATE[name].replace("builtin", args.tokenizer)
            cfg = tmp / f"{name}.yaml"
            fleet_file(cfg, gw_port, admin_port, upstreams, args.kv_port, routing, name == "precise")
            cmd = [sys.executable, "-m", "fleetgate", "gateway", "--config", str(cfg)]
        else:
            cmd = peer_command(peers[name], gw_port, upstreams)
        router = start_router(cmd, log_dir / f"{args.label}-{name}.log", gw_port, 120)
        try:
            time.sleep(2.0)  # health probes, first scrapes and the KV-event subscriptions settle before load
            out_dir = tmp / "bench"
            cmd = [sys.executable, "-m", "fleetgate", "bench", "--url", f"http://127.0.0.1:{gw_port}/v1",
                   "--model", MODEL, "--api", "chat", "--workload", "shared-prefix",
                   "--groups", str(args.groups), "--prompts-per-group", str(args.prompts_per_group),
                   "--system-len", str(args.system_len), "--question-len", str(args.question_len),
                   "--output-len", str(args.output_len), "--load", f"poisson={args.rate}",
                   "--num-requests", str(args.groups * args.prompts_per_group), "--seed", str(args.seed),
                   "--processes", "2", "--timeout", "600", "--slo", f"ttft={args.slo_ttft}s",
                   "--out", str(out_dir)]  # fmt: skip
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            summary = json.loads((out_dir / "results.json").read_text())["summary"]
            decided = decisions(admin) if admin else {}
        finally:
            router.terminate()
            router.wait(30)
    hits1, queries1 = hit_totals(upstreams)
    ttft = summary.get("ttft", {})
    total = sum(decided.values()) or 1.0
    return {
        "contender": name,
        "ttft_p50": ttft.get("p50", float("nan")),
        "ttft_p90": ttft.get("p90", float("nan")),
        "goodput": summary.get("slo_attainment", float("nan")),
        "success": summary["success_rate"],
        "hit": (hits1 - hits0) / (queries1 - queries0) if queries1 > queries0 else float("nan"),
        "decided": " ".join(
            f"{k}:{v / total:.0%}" for k, v in sorted(decided.items(), key=lambda kv: -kv[1])
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstreams", required=True, help="comma-separated vLLM base URLs")
    ap.add_argument("--kv-port", type=int, default=5600, help="server i publishes KV events on this + i")
    ap.add_argument("--tokenizer", default="/tmp/model", help="the served model's directory (precise)")
    ap.add_argument("--rate", type=float, default=25.0, help="Poisson requests/s")
    ap.add_argument("--groups", type=int, default=48)
    ap.add_argument("--prompts-per-group", type=int, default=6)
    ap.add_argument("--system-len", type=int, default=2528)
    ap.add_argument("--question-len", type=int, default=200)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO for goodput, seconds")
    ap.add_argument("--contenders", default="round-robin,least-load,approximate,precise")
    ap.add_argument("--peer", action="append", default=[], help="NAME='COMMAND with {port} and {upstreams}'")
    ap.add_argument("--label", default="run", help="names this point in the output")
    ap.add_argument("--log-dir", default=str(Path(tempfile.gettempdir()) / "routing-real"))
    ap.add_argument("--out", type=Path, help="append one JSON line per contender here")
    args = ap.parse_args()
    upstreams = args.upstreams.split(",")
    peers = dict(p.split("=", 1) for p in args.peer)
    names = [*args.contenders.split(","), *peers]
    print(f"{args.label}: {len(upstreams)} servers, {args.rate:g} req/s, {args.groups} prefixes of "
          f"{args.system_len} tokens x {args.prompts_per_group}")  # fmt: skip
    print("| contender | TTFT p50 | p90 | goodput | success | server hit rate | decided by |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = run_one(args, name, upstreams, peers)
        print(f"| {name} | {r['ttft_p50']:.2f} s | {r['ttft_p90']:.2f} s | {r['goodput']:.0%} | "
              f"{r['success']:.0%} | {r['hit']:.2f} | {r['decided']} |", flush=True)  # fmt: skip
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps({"label": args.label, "rate": args.rate, **r}) + "\n")


if __name__ == "__main__":
    main()
