"""Anthropic's /v1/messages passed through (`anthropic: passthrough`) against translated, and against the
OpenAI chat route, through one gateway in front of one simulator, in the same run.

    python benchmarks/messages_passthrough.py --requests 100 --runs 3

One simulator serves two names: `sim` (a pool that translates) and `sim-pass` (a pool that passes through).
Requests go one at a time, the three routes taking turns. TTFT is measured at the client to the first event
that carries text; the gateway's CPU seconds per request come from /proc. The simulator converts its own chat
stream for /v1/messages as vLLM does, so the passed-through TTFT includes that upstream work: the gateway's
share is its CPU per request.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procs import cpu_seconds, free_port, start_sim, wait_http
from translation_cost import PROMPT, has_text

ROUTES = ("openai", "anthropic translated", "anthropic passthrough")


def request(route: str, output_len: int) -> tuple[str, dict[str, object]]:
    if route == "openai":
        body = {
            "model": "sim",
            "messages": PROMPT,
            "max_tokens": output_len,
            "stream": True,
        }  # no ignore_eos: Messages bodies cannot carry it, so all answers end as the simulator ends them
        return "/v1/chat/completions", body
    model = "sim" if route == "anthropic translated" else "sim-pass"
    return "/v1/messages", {"model": model, "messages": PROMPT, "max_tokens": output_len, "stream": True}


def ttft(client: httpx.Client, route: str, output_len: int) -> float:
    path, body = request(route, output_len)
    api = "openai" if route == "openai" else "anthropic"
    start = time.perf_counter()
    first = float("nan")
    with client.stream("POST", path, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first != first and has_text(api, line):  # nan: not yet
                first = time.perf_counter() - start
    return first


def fleet(port: int, admin: int, sim_url: str) -> str:
    return f"""\
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin}}}
pools:
  - name: translated
    models: [sim]
    endpoints: [{sim_url}]
  - name: passed
    anthropic: passthrough
    models: [sim-pass]
    endpoints: [{sim_url}]
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100, help="requests per route per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--time-scale", default="50")
    args = ap.parse_args()
    sim_port, port = free_port(), free_port()
    sim = start_sim(sim_port, "--served-model-name", "sim-pass", "--time-scale", args.time_scale)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.yaml"
        path.write_text(fleet(port, free_port(), f"http://127.0.0.1:{sim_port}"))
        log = Path(tmp) / "gateway.log"
        with log.open("wb") as out:
            gw = subprocess.Popen([sys.executable, "-m", "fleetgate", "gateway", "--config", str(path)],
                                  stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{port}/ready", gw)
            per_run: dict[str, list[dict[str, float]]] = {r: [] for r in ROUTES}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                for r in ROUTES:  # warm every path before measuring
                    for _ in range(20):
                        ttft(client, r, args.output_len)
                for _ in range(args.runs):
                    samples: dict[str, list[float]] = {r: [] for r in ROUTES}
                    cpu = dict.fromkeys(ROUTES, 0.0)
                    for _ in range(args.requests):
                        for r in ROUTES:
                            before = cpu_seconds(gw.pid)
                            samples[r].append(ttft(client, r, args.output_len))
                            cpu[r] += cpu_seconds(gw.pid) - before
                    for r in ROUTES:
                        per_run[r].append({"p50": statistics.median(samples[r]),
                                           "p90": statistics.quantiles(samples[r], n=10)[8],
                                           "cpu": cpu[r] / args.requests})  # fmt: skip
        finally:
            gw.terminate()
            gw.wait(10)
            sim.terminate()
            sim.wait(10)
    med = {r: {k: statistics.median(x[k] for x in per_run[r]) for k in ("p50", "p90", "cpu")} for r in ROUTES}
    print(f"Streamed, {args.output_len} tokens, sim --time-scale {args.time_scale}, {args.requests} requests")
    print(f"per route per run, medians of {args.runs} runs (TTFT client-side; gateway CPU from /proc):")
    print(f"{'route':<24}{'p50 ms':>10}{'p90 ms':>10}{'gw CPU ms/req':>16}{'CPU vs translated':>20}")
    base = med["anthropic translated"]["cpu"]
    for r in ROUTES:
        m = med[r]
        print(f"{r:<24}{m['p50'] * 1e3:>10.3f}{m['p90'] * 1e3:>10.3f}{m['cpu'] * 1e3:>16.3f}"
              f"{m['cpu'] / base:>20.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
