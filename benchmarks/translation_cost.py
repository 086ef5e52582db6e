"""What translation adds: time to first token of a translated stream (Anthropic `/v1/messages`, Ollama
`/api/chat`) against the same request on the OpenAI route, through one gateway in front of one simulator,
in the same run; and the translator's own cost per event, on vLLM's recorded stream.

    python benchmarks/translation_cost.py --requests 200 --runs 3

Requests go one at a time, the routes taking turns (so drift on a shared box hits all of them alike), each a
stream of `--output-len` tokens with a short prompt. TTFT is measured at the client from sending the request
to the first event that carries text, in each API's own shape. The added TTFT is the translated route's
quantile minus the OpenAI route's, medians over `--runs` runs. The gateway's CPU seconds per request come
from /proc over each route's requests (its CPU per request is what differs by route).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procs import cpu_seconds, free_port, start_sim, wait_http

MODEL = "sim"
PROMPT = [{"role": "user", "content": "Plan two days in Tainan."}]


def request(route: str, output_len: int) -> tuple[str, dict[str, Any]]:
    if route == "openai":
        body = {
            "model": MODEL,
            "messages": PROMPT,
            "max_tokens": output_len,
            "stream": True,
            "ignore_eos": True,
        }
        return "/v1/chat/completions", body
    if route == "anthropic":
        return "/v1/messages", {"model": MODEL, "messages": PROMPT, "max_tokens": output_len, "stream": True}
    return "/api/chat", {"model": MODEL, "messages": PROMPT, "options": {"num_predict": output_len}}


def has_text(route: str, line: str) -> bool:
    """The line is (part of) the first event that carries text, in the route's API."""
    if route == "openai":
        return line.startswith("data: {") and '"content":"' in line and '"content":""' not in line
    if route == "anthropic":
        return line.startswith("data: {") and '"text_delta"' in line
    return line.startswith("{") and '"content":"' in line and '"content":""' not in line


def ttft(client: httpx.Client, route: str, output_len: int) -> float:
    path, body = request(route, output_len)
    start = time.perf_counter()
    first = float("nan")
    with client.stream("POST", path, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first != first and has_text(route, line):  # nan: not yet
                first = time.perf_counter() - start
    return first


def translator_cost(repeats: int) -> dict[str, float]:
    """Microseconds per event to translate vLLM's recorded chat stream (in-process, no sockets)."""
    import asyncio

    from fleetgate.api import anthropic, ollama
    from fleetgate.api.translation import TranslatingSend, Translator

    case = json.loads((Path(__file__).resolve().parent.parent / "tests/data/contract.json").read_text())
    chunks = [c[1].encode() for c in case["chat_stream_usage"]["chunks"]]
    events = sum(c.count(b"\n\n") for c in chunks)

    async def sink(message: dict[str, Any]) -> None:
        return None

    async def run(make: Any) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            t: Translator = make()
            s = TranslatingSend(sink, t)
            await s({"type": "http.response.start", "status": 200,
                     "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
            for c in chunks:
                await s({"type": "http.response.body", "body": c, "more_body": True})
            await s({"type": "http.response.body", "body": b"", "more_body": False})
        return float((time.perf_counter() - start) / (repeats * events) * 1e6)

    async def passthrough() -> float:
        # The relay's own send of the same chunks, for scale.
        start = time.perf_counter()
        for _ in range(repeats):
            for c in chunks:
                await sink({"type": "http.response.body", "body": c, "more_body": True})
        return float((time.perf_counter() - start) / (repeats * events) * 1e6)

    return {
        "openai (bytes through)": asyncio.run(passthrough()),
        "anthropic": asyncio.run(run(anthropic.MessagesTranslator)),
        "ollama": asyncio.run(run(ollama.ChatTranslator)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="requests per route per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--time-scale", default="50")
    args = ap.parse_args()
    routes = ["openai", "anthropic", "ollama"]
    sim_port, port = free_port(), free_port()
    sim = start_sim(sim_port, "--time-scale", args.time_scale)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "gateway.log"
        cmd = [sys.executable, "-m", "fleetgate", "gateway", "--host", "127.0.0.1", "--port", str(port),
               "--admin-port", str(free_port()), "--upstream", f"http://127.0.0.1:{sim_port}"]  # fmt: skip
        with log.open("wb") as out:
            gw = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/ready", gw)
            per_run: dict[str, list[dict[str, float]]] = {r: [] for r in routes}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                for r in routes:  # warm every path (imports, connections) before measuring
                    for _ in range(20):
                        ttft(client, r, args.output_len)
                for _ in range(args.runs):
                    samples: dict[str, list[float]] = {r: [] for r in routes}
                    cpu: dict[str, float] = dict.fromkeys(routes, 0.0)
                    for _ in range(args.requests):
                        for r in routes:
                            before = cpu_seconds(gw.pid)
                            samples[r].append(ttft(client, r, args.output_len))
                            cpu[r] += cpu_seconds(gw.pid) - before
                    for r in routes:
                        q = statistics.quantiles(samples[r], n=10)
                        per_run[r].append({"p50": statistics.median(samples[r]), "p90": q[8],
                                           "cpu": cpu[r] / args.requests})  # fmt: skip
        finally:
            gw.terminate()
            gw.wait(10)
            sim.terminate()
            sim.wait(10)
    med = {r: {k: statistics.median(x[k] for x in per_run[r]) for k in ("p50", "p90", "cpu")} for r in routes}
    base = med["openai"]
    scale = args.time_scale
    print(f"TTFT through the gateway, streamed chat, {args.output_len} tokens, sim --time-scale {scale},")
    print(f"{args.requests} requests per route per run, medians of {args.runs} runs (client-side):")
    head = ("route", "p50 ms", "p90 ms", "added p50 ms", "added p90 ms", "gw CPU ms/req")
    print(f"{head[0]:<12}{head[1]:>10}{head[2]:>10}{head[3]:>15}{head[4]:>15}{head[5]:>16}")
    for r in routes:
        m = med[r]
        print(f"{r:<12}{m['p50'] * 1e3:>10.3f}{m['p90'] * 1e3:>10.3f}{(m['p50'] - base['p50']) * 1e3:>15.3f}"
              f"{(m['p90'] - base['p90']) * 1e3:>15.3f}{m['cpu'] * 1e3:>16.3f}")  # fmt: skip
    print("\nTranslator cost per SSE event, vLLM's recorded chat stream, in-process:")
    for name, us in translator_cost(2000).items():
        print(f"  {name:<24}{us:>8.2f} us/event")


if __name__ == "__main__":
    main()
