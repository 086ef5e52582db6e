"""The gateway in front of two real vLLM servers (run on the lent GPU machine, see ../shared/gpu/README.md).

    python benchmarks/gateway_real_vllm.py --model-dir /tmp/model [--out DIR]

Expects `vllm` importable (PYTHONPATH) and a model directory made by make_model_dir.py. Starts two vLLM
servers (dummy weights) and fleetgate in front of them, then:
1. replays every case of tests/data/contract.json directly and through the gateway, and compares status and
   body shape (keys and types, recursively; streams chunk by chunk);
2. checks that the gateway's scraper reads real values from vLLM's /metrics under load;
3. kills one vLLM (SIGKILL) while non-streamed requests are in flight and counts lost requests (must be 0:
   none of them had started streaming, so the relay retries them on the other server).
Prints a summary and writes it to OUT/gateway_real_vllm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from procs import free_port, wait_http  # noqa: E402

SKIP = {"chat_json_schema", "load_lora_disabled", "is_sleeping"}  # recording defect; dev-mode-only routes


def shape(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: shape(x) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    return type(v).__name__


def events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append("[DONE]" if data == "[DONE]" else shape(json.loads(data)))
    return out


def call(base: str, case: dict[str, Any]) -> tuple[int, Any]:
    req = case["request"]
    body = req["body"]
    if isinstance(body, dict) and body.get("prompt") == "[7] * 200000  (shortened here)":
        body = {**body, "prompt": [7] * 200000}
    kw: dict[str, Any] = {"timeout": 120}
    if isinstance(body, str):
        kw["content"] = body.encode()
        kw["headers"] = {"content-type": "application/json"}
    elif body is not None:
        kw["json"] = body
    r = httpx.request(req["method"], base + req["path"], **kw)
    if "text/event-stream" in r.headers.get("content-type", ""):
        return r.status_code, events(r.text)
    try:
        return r.status_code, shape(r.json()) if r.content else ""
    except json.JSONDecodeError:
        return r.status_code, r.text[:80]


def _distinct(events: list[Any]) -> list[str]:
    return sorted({json.dumps(e, sort_keys=True) for e in events})


def compare_contract(direct: str, gateway: str) -> list[dict[str, Any]]:
    cases = json.loads((ROOT / "tests" / "data" / "contract.json").read_text())
    rows = []
    for name, case in cases.items():
        if name in SKIP or case["request"]["path"] in ("/health",):
            continue
        d = call(direct, case)
        g = call(gateway, case)
        same_status = d[0] == g[0]
        # Random weights may end a stream early (no ignore_eos in these cases), so streams compare by the set
        # of event shapes and their last two events, not event by event.
        if isinstance(d[1], list) and isinstance(g[1], list):
            same_shape = _distinct(d[1]) == _distinct(g[1]) and d[1][-2:] == g[1][-2:]
        else:
            same_shape = d[1] == g[1] or case["request"]["path"] == "/v1/models"
        rows.append({"case": name, "direct": d[0], "gateway": g[0], "same_status": same_status,
                     "same_shape": same_shape})  # fmt: skip
    return rows


async def load_and_kill(gateway: str, victim: subprocess.Popen[bytes], n: int) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=120) as c:
        body = {"model": "llama-8b", "prompt": "x", "max_tokens": 200, "ignore_eos": True}

        async def one() -> int:
            r = await c.post(f"{gateway}/v1/completions", json=body)
            return r.status_code

        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        await asyncio.sleep(1.0)
        os.killpg(victim.pid, signal.SIGKILL)  # the API server and its engine: a whole server dies
        codes = await asyncio.gather(*tasks)
    return {"sent": n, "ok": sum(1 for s in codes if s == 200), "lost": sum(1 for s in codes if s != 200)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/model")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = ap.parse_args()
    env = {
        **os.environ,
        "VLLM_USE_FLASHINFER_SAMPLER": "0",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    ports = [free_port(), free_port()]
    vllms = []
    for i, p in enumerate(ports):
        log = (args.out / f"vllm{i}.log").open("wb")
        cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", args.model_dir, "--load-format",
               "dummy", "--served-model-name", "llama-8b", "--host", "127.0.0.1", "--port", str(p),
               "--enforce-eager", "--gpu-memory-utilization", "0.3", "--max-model-len", "32768"]  # fmt: skip
        vllms.append(
            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        )
    for p, proc in zip(ports, vllms, strict=True):
        wait_http(f"http://127.0.0.1:{p}/health", proc, 600, every=1.0)
    gport, aport = free_port(), free_port()
    gw_log = (args.out / "gateway.log").open("wb")
    gw = subprocess.Popen(
        [sys.executable, "-m", "fleetgate", "gateway", "--host", "127.0.0.1", "--port", str(gport),
         "--admin-port", str(aport), *[a for p in ports for a in ("--upstream", f"http://127.0.0.1:{p}")]],
        stdout=gw_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    gateway = f"http://127.0.0.1:{gport}"
    wait_http(f"{gateway}/ready", gw, 60)
    summary: dict[str, Any] = {}
    try:
        rows = compare_contract(f"http://127.0.0.1:{ports[0]}", gateway)
        summary["contract"] = rows
        summary["contract_all_same"] = all(r["same_status"] and r["same_shape"] for r in rows)
        # Scraping reads real values: put some load on and look at what the gateway saw.
        seen: list[Any] = []

        async def burst() -> None:
            async with httpx.AsyncClient(timeout=120) as ac:
                body = {"model": "llama-8b", "prompt": "x", "max_tokens": 300, "ignore_eos": True}
                url = f"{gateway}/v1/completions"
                tasks = [asyncio.ensure_future(ac.post(url, json=body)) for _ in range(32)]
                for _ in range(20):
                    await asyncio.sleep(0.1)
                    seen.append((await ac.get(f"http://127.0.0.1:{aport}/admin/fleet")).json())
                await asyncio.gather(*tasks)

        asyncio.run(burst())
        loads = [e["load"] for snap in seen for e in snap["pools"]["default"] if e["load"]]
        summary["scrape_max_running"] = max((ld["running"] for ld in loads), default=None)
        summary["scrape_max_kv_usage"] = max((ld["kv_usage"] for ld in loads), default=None)
        summary["kill"] = asyncio.run(load_and_kill(gateway, vllms[1], 24))
    finally:
        gw.send_signal(signal.SIGINT)
        gw.wait(30)
        for v in vllms:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(v.pid, signal.SIGKILL)
    (args.out / "gateway_real_vllm.json").write_text(json.dumps(summary, indent=2))
    bad = [r for r in summary["contract"] if not (r["same_status"] and r["same_shape"])]
    print(f"contract cases: {len(summary['contract'])}, differing: {[r['case'] for r in bad]}")
    running, kv = summary["scrape_max_running"], summary["scrape_max_kv_usage"]
    print(f"scrape under load: max running {running}, max kv {kv}")
    print(f"kill one vLLM mid-run: {summary['kill']}")


if __name__ == "__main__":
    main()
