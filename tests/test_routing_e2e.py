"""Routing outcomes on simulated fleets: prefix groups concentrate (approximate and precise), load overrides
affinity at saturation, sessions stick, sheddable traffic gets 429 while critical traffic waits and is
served, and an adapter nobody has loaded is loaded on demand."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import GatewayFactory, GatewayProcess, SimFactory, SimProcess, free_port, until
from tests.test_gateway import client, metric

MODEL = "llama-8b"
SYSTEM = "You are the travel desk of a large booking site. Answer with care. " * 40  # ~700 tokens


def kv_config(port: int) -> str:
    return orjson.dumps(
        {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{port}", "topic": "kv"}
    ).decode()


def fleet(sims: list[SimProcess], routing: str, kv_ports: list[int] | None = None, extra: str = "") -> str:
    lines = []
    for i, s in enumerate(sims):
        kv = f", kv_events: 'tcp://127.0.0.1:{kv_ports[i]}'" if kv_ports else ""
        lines.append(f"      - {{url: '{s.url}', name: e{i}{kv}}}")
    endpoints = "\n".join(lines)
    return f"""\
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
keepalive_after: 0.2
{extra}
pools:
  - name: main
    models: [{MODEL}]
    endpoints:
{endpoints}
    routing: {routing}
"""


def pool_view(gw: GatewayProcess) -> Any:
    return httpx.get(f"{gw.admin}/admin/fleet").json()["pools"]["main"]


def ask(gw: GatewayProcess, question: str, **headers: str) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 2, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}  # fmt: skip
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("mode", ["approximate", "precise"])
def test_requests_of_one_prefix_group_concentrate(
    mode: str, sim_factory: SimFactory, gateway_factory: GatewayFactory
) -> None:
    kv_ports = [free_port() for _ in range(4)] if mode == "precise" else None
    sims = [
        sim_factory("--served-model-name", MODEL, "--time-scale", "50", "--seed", str(i),
                    *(["--kv-events-config", kv_config(kv_ports[i])] if kv_ports else []))
        for i in range(4)
    ]  # fmt: skip
    tokenizer = "builtin" if mode == "precise" else "none"
    gw = gateway_factory(fleet(sims, f"{{tokenizer: {tokenizer}, debug_headers: true}}", kv_ports))
    landed: dict[int, Counter[str]] = {g: Counter() for g in range(3)}
    hits: list[float] = []
    for round_ in range(5):
        for g in range(3):
            body = {"model": MODEL, "max_tokens": 2, "messages": [
                {"role": "system", "content": f"Group {g}. {SYSTEM}"},
                {"role": "user", "content": f"Question {round_} of group {g}?"}]}  # fmt: skip
            r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
            assert r.status_code == 200, r.text
            landed[g][r.headers["x-fleetgate-endpoint"]] += 1
            if round_:
                hits.append(float(r.headers["x-fleetgate-prefix-hit"]))
        if mode == "precise" and round_ == 0:
            until(functools.partial(events_flow, gw, landed_on(landed)), what="KV events")
    for g, where in landed.items():
        assert len(where) == 1, f"group {g} spread over {dict(where)}"
    assert min(hits) > 0.8  # the shared system prompt is ~90% of each prompt
    assert metric(gw.admin, "fleetgate_route_decisions_total", reason="prefix") >= 9
    if mode == "precise":
        view = pool_view(gw)
        assert sum(e.get("precise_index_blocks", 0) for e in view["endpoints"]) > 100


def landed_on(landed: dict[int, Counter[str]]) -> set[str]:
    return {name for where in landed.values() for name in where}


def events_flow(gw: GatewayProcess, endpoints: set[str]) -> bool:
    return all(e["kv_events"]["live"] for e in pool_view(gw)["endpoints"] if e["name"] in endpoints)


@contextmanager
def busy(sim: SimProcess, streams: int, tokens: int = 4000) -> Iterator[None]:
    """Keep `sim` busy with long streams sent straight to it; closing them aborts the work."""
    stop = threading.Event()

    def one() -> None:
        body = {
            "model": MODEL,
            "prompt": "keep busy",
            "max_tokens": tokens,
            "stream": True,
            "ignore_eos": True,
        }
        with httpx.stream("POST", f"{sim.url}/v1/completions", json=body, timeout=60) as r:
            for _ in r.iter_bytes():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=one, daemon=True) for _ in range(streams)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(30)


def saturated(gw: GatewayProcess, name: str) -> bool:
    return any(e["name"] == name and e["saturated"] for e in pool_view(gw)["endpoints"])


def test_load_overrides_affinity_when_the_home_queues_max_imbalance_longer(
    sim_factory: SimFactory, gateway_factory: GatewayFactory
) -> None:
    sims = [
        sim_factory("--served-model-name", MODEL, "--time-scale", "5", "--max-num-seqs", "1")
        for _ in range(2)
    ]
    routing = "{debug_headers: true, saturation: {max_waiting: 1, max_imbalance: 1}}"
    gw = gateway_factory(fleet(sims, routing))
    first = ask(gw, "Where to eat in Lyon?")
    home = first.headers["x-fleetgate-endpoint"]
    assert ask(gw, "And in Nice?").headers["x-fleetgate-endpoint"] == home
    sim = sims[int(home[1:])]
    with busy(sim, streams=3):
        until(lambda: saturated(gw, home), what="saturation")
        moved = ask(gw, "And in Arles?")
        assert moved.status_code == 200
        assert moved.headers["x-fleetgate-endpoint"] != home
        assert float(moved.headers["x-fleetgate-prefix-hit"]) < 0.5  # it gave up the cached prefix


def test_a_session_header_sticks_to_one_endpoint(
    sim_factory: SimFactory, gateway_factory: GatewayFactory
) -> None:
    sims = [sim_factory("--served-model-name", MODEL, "--time-scale", "50") for _ in range(3)]
    gw = gateway_factory(fleet(sims, "{debug_headers: true}"))
    c = client(gw.url)
    for session in ("alice", "bob"):
        where = set()
        for i in range(5):
            r = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"unrelated question {i} {session}"}],
                max_tokens=1, extra_headers={"x-session-id": session},
            )  # fmt: skip
            where.add(r.headers["x-fleetgate-endpoint"])
        assert len(where) == 1


def test_sheddable_traffic_gets_429_while_critical_traffic_waits_and_is_served(
    sim_factory: SimFactory, gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRITICAL_KEY", "sk-critical")
    monkeypatch.setenv("BATCH_KEY", "sk-batch")
    sim = sim_factory("--served-model-name", MODEL, "--time-scale", "5", "--max-num-seqs", "1")
    keys = """keys:
  - {name: web, key_env: CRITICAL_KEY, priority: 10}
  - {name: batch, key_env: BATCH_KEY, priority: -1}"""
    gw = gateway_factory(fleet([sim], "{saturation: {max_waiting: 1}}", extra=keys))
    critical = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-critical", max_retries=0)
    sheddable = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-batch", max_retries=0)
    assert sheddable.completions.create(model=MODEL, prompt="ok while idle", max_tokens=1).choices
    served: list[str] = []
    with busy(sim, streams=3):
        until(lambda: saturated(gw, "e0"), what="saturation")
        with pytest.raises(openai.RateLimitError) as shed:
            sheddable.completions.create(model=MODEL, prompt="shed me", max_tokens=1)
        assert int(shed.value.response.headers["retry-after"]) >= 1
        # A critical stream waits in the queue; keep-alive comments reach it while it does.
        body = {"model": MODEL, "prompt": "serve me", "max_tokens": 3, "stream": True}
        headers = {"authorization": "Bearer sk-critical"}

        def wait_for_it() -> None:
            with httpx.stream(
                "POST", f"{gw.url}/v1/completions", json=body, headers=headers, timeout=60
            ) as r:
                served.append(str(r.status_code))
                served.extend(line for line in r.iter_lines() if line)

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        until(lambda: ": keep-alive" in served, what="a keep-alive comment")
        assert pool_view(gw)["queue"]["waiting"] == 1
    waiter.join(30)
    assert served[0] == "200" and served[-1] == "data: [DONE]"
    assert any(line.startswith("data: {") and '"text"' in line for line in served)
    assert metric(gw.admin, "fleetgate_shed_total", pool="main", reason="saturated") == 1
    assert critical.completions.create(model=MODEL, prompt="after", max_tokens=1).choices


def test_an_adapter_nobody_has_loaded_is_loaded_on_demand_once(
    sim_factory: SimFactory, gateway_factory: GatewayFactory
) -> None:
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    sims = [
        sim_factory("--served-model-name", MODEL, "--enable-lora", "--max-loras", "2", env=env)
        for _ in range(2)
    ]
    adapters = "    adapters: [{name: sql-lora, path: org/sql-lora}]\n"
    gw = gateway_factory(fleet(sims, "{debug_headers: true}") + adapters)
    results: list[httpx.Response] = []

    def call() -> None:
        body = {"model": "sql-lora", "prompt": "SELECT", "max_tokens": 2}
        results.append(httpx.post(f"{gw.url}/v1/completions", json=body, timeout=30))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200] * 4
    assert {r.json()["model"] for r in results} == {"sql-lora"}
    holders = [
        s for s in sims if "sql-lora" in {m["id"] for m in httpx.get(f"{s.url}/v1/models").json()["data"]}
    ]
    assert len(holders) == 1  # one load, on one endpoint, for four concurrent requests
    assert {r.headers["x-fleetgate-endpoint"] for r in results} == {f"e{sims.index(holders[0])}"}
    missing = httpx.post(f"{gw.url}/v1/completions", json={"model": "other-lora", "prompt": "x"}, timeout=10)
    assert missing.status_code == 404
