"""The response cache: exact-match hits replay identical bodies and streams, per tenant unless shared,
bounded by TTL and size, in memory or shared through Redis; a hit reaches no engine and is recorded as one."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.tenancy.cache import Entry, MemoryCache, Recorder
from tests.conftest import GatewayFactory, GatewayProcess, SimProcess, free_port, spawn_sim, until
from tests.services import redis_url  # noqa: F401  (a fixture)

MODEL = "llama-8b"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    proc = spawn_sim(tmp_path_factory.mktemp("sim"), "--served-model-name", MODEL, "--time-scale", "50")
    yield proc
    proc.stop()


def engine_requests(sim: SimProcess) -> float:
    families = text_string_to_metric_families(httpx.get(f"{sim.url}/metrics").text)
    return sum(s.value for f in families for s in f.samples if s.name == "vllm:request_success_total")


def _gateway(factory: GatewayFactory, sim: SimProcess, cache: str, extra: str = "") -> GatewayProcess:
    return factory(f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
keys:
  - {{name: alpha, key: sk-alpha}}
  - {{name: beta, key: sk-beta}}
tenancy:
  cache: {cache}
{extra}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sim.url}]
""")


def post(gw: GatewayProcess, body: dict[str, object], key: str = "sk-alpha", cache: str | None = "on"
         ) -> httpx.Response:  # fmt: skip
    headers = {"authorization": f"Bearer {key}"}
    if cache is not None:
        headers["x-fleetgate-cache"] = cache
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Noodles in Tainan?"}], "max_tokens": 12}
ASK = {"authorization": "Bearer sk-alpha", "x-fleetgate-cache": "on"}


def sse_text(raw: bytes) -> str:
    """The content of a chat stream's events."""
    out = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                out.append(choice["delta"].get("content") or "")
    return "".join(out)


def test_hits_replay_identical_bodies_and_streams_and_reach_no_engine(
    gateway_factory: GatewayFactory, sim: SimProcess, tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    gw = _gateway(gateway_factory, sim, "{enabled: true}", f"  database: sqlite:///{db}")
    first = post(gw, BODY)
    assert first.status_code == 200 and first.headers["x-fleetgate-cache"] == "MISS"
    served = engine_requests(sim)
    again = post(gw, BODY)
    assert again.headers["x-fleetgate-cache"] == "HIT" and again.content == first.content
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert engine_requests(sim) == served  # no engine worked for the hit

    stream_body = {**BODY, "stream": True}
    chat = f"{gw.url}/v1/chat/completions"
    with httpx.stream("POST", chat, json=stream_body, timeout=30, headers=ASK) as r:
        assert r.headers["x-fleetgate-cache"] == "MISS"
        original = [c for c in r.iter_raw()]
    with httpx.stream("POST", chat, json=stream_body, timeout=30, headers=ASK) as r:
        assert r.headers["x-fleetgate-cache"] == "HIT"
        assert r.headers["content-type"].startswith("text/event-stream")
        replayed = b"".join(r.iter_raw())
    assert replayed == b"".join(original) and replayed.endswith(b"data: [DONE]\n\n")
    # The SDK reads the replay as a real stream.
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-alpha", max_retries=0,
                      default_headers={"x-fleetgate-cache": "on"})  # fmt: skip
    chunks = list(c.chat.completions.create(**stream_body))  # type: ignore[call-overload]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text and text == sse_text(replayed)

    other = post(gw, BODY, key="sk-beta")  # tenants are isolated by default
    assert other.headers["x-fleetgate-cache"] == "MISS"
    assert "x-fleetgate-cache" not in post(gw, BODY, cache="off").headers  # off: neither read nor written
    assert "x-fleetgate-cache" not in post(gw, BODY, cache=None).headers  # not asked, not deterministic
    assert post(gw, {**BODY, "max_tokens": 13}).headers["x-fleetgate-cache"] == "MISS"  # any change misses

    gw.stop()
    with sqlite3.connect(db) as conn:
        hits = conn.execute("select count(*), sum(prompt_tokens + output_tokens) from usage where cache_hit")
        assert hits.fetchone() == (3, 0)  # body, stream and the SDK's stream: recorded as hits, no tokens


def test_deterministic_requests_shared_ttl_and_redis(
    gateway_factory: GatewayFactory,
    sim: SimProcess,
    redis_url: str,  # noqa: F811
) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/5"
    cache = "{enabled: true, deterministic: true, ttl: 1.0, shared_across_tenants: true}"
    one = _gateway(gateway_factory, sim, cache, f'  redis: "{url}"')
    two = _gateway(gateway_factory, sim, cache, f'  redis: "{url}"')
    cold = {**BODY, "temperature": 0}
    first = post(one, cold, cache=None)
    assert first.headers["x-fleetgate-cache"] == "MISS"
    hit = post(two, cold, key="sk-beta", cache=None)  # another replica, another tenant: shared here
    assert hit.headers["x-fleetgate-cache"] == "HIT" and hit.content == first.content
    assert "x-fleetgate-cache" not in post(one, {**BODY, "temperature": 0.7}, cache=None).headers
    until(lambda: post(two, cold, cache=None).headers["x-fleetgate-cache"] == "MISS", "the entry to expire")


async def test_memory_cache_keeps_the_most_recently_used_within_its_bounds() -> None:
    cache = MemoryCache(ttl=60, max_entries=2)
    for k in ("a", "b"):
        await cache.put(k, Entry(200, b"application/json", [k.encode()]))
    assert await cache.get("a") is not None  # a is now the most recent
    await cache.put("c", Entry(200, b"application/json", [b"c"]))
    assert await cache.get("b") is None and await cache.get("a") is not None and len(cache.entries) == 2
    packed = Entry(200, b"text/event-stream", [b"data: 1\n\n", b"data: [DONE]\n\n"])
    assert Entry.unpack(packed.pack()) == packed


async def test_answers_too_big_are_passed_on_but_not_kept() -> None:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    small, big = Recorder(send, limit=100), Recorder(send, limit=10)
    for r in (small, big):
        await r.send({"type": "http.response.start", "status": 200,
                      "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        for chunk in (b": keep-alive\n\n", b"data: 0123456789\n\n", b"data: [DONE]\n\n"):
            await r.send({"type": "http.response.body", "body": chunk, "more_body": True})
    assert small.entry == Entry(200, b"text/event-stream", [b"data: 0123456789\n\n", b"data: [DONE]\n\n"])
    assert big.entry is None and len(sent) == 8  # the client got everything either way


def test_a_redis_cache_that_fails_is_a_miss_not_an_error(
    gateway_factory: GatewayFactory,
    sim: SimProcess,
    redis_url: str,  # noqa: F811
) -> None:
    """The cache is an optimisation: a burst wider than redis-py's pool (100 connections, the 101st refused
    at once) and a Redis that is not there both leave the requests answered, from the engine."""
    url = redis_url.rsplit("/", 1)[0] + "/6"
    cache = "{enabled: true, ttl: 30}"
    live = _gateway(gateway_factory, sim, cache, f'  redis: "{url}"')
    dead = _gateway(gateway_factory, sim, cache, f'  redis: "redis://127.0.0.1:{free_port()}/0"')

    async def burst(gw: GatewayProcess, n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as c:
            bodies = [{**BODY, "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(n)]
            return await asyncio.gather(
                *(c.post(f"{gw.url}/v1/chat/completions", json=b, headers=ASK) for b in bodies)
            )

    for gw, n in ((live, 300), (dead, 3)):
        responses = asyncio.run(burst(gw, n))
        failed = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
        assert not failed, failed[:3]
        assert {r.headers["x-fleetgate-cache"] for r in responses} == {"MISS"}
