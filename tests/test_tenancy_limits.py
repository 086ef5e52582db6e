"""Limits and budgets: the same rules in memory and in a real Redis (Lua scripts), then two gateway processes
sharing one Redis (N requests at once against a limit of M: exactly M admitted), and LiteLLM's concurrent
budget bypass, which reservations make impossible."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fleetgate.admission.auth import Tenant
from fleetgate.config import parse_config
from fleetgate.protocol import RateLimitError, ServiceUnavailableError
from fleetgate.tenancy.keys import Budget, LimitSpec
from fleetgate.tenancy.limiter import Limiter, MemoryLimiter, RedisLimiter, Scope, Ticket, rate_headers
from fleetgate.tenancy.rows import UsageRow
from fleetgate.tenancy.runtime import Tenancy
from fleetgate.tenancy.store import open_store
from tests.conftest import GatewayFactory, SimProcess, free_port, spawn_sim
from tests.services import redis_url  # noqa: F401  (a fixture)

MODEL = "llama-8b"


async def eventually(cond: Callable[[], object], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await cond():  # type: ignore[misc]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    made: Limiter
    if request.param == "memory":
        made = MemoryLimiter(ttl=0.3)
    else:
        url: str = request.getfixturevalue("redis_url")
        made = RedisLimiter(url, ttl=0.3, prefix=f"t{time.monotonic_ns()}:")
    yield made
    await made.close()


def scope(name: str, **kw: object) -> Scope:
    return Scope(name, LimitSpec(**kw), period="p1")  # type: ignore[arg-type]


async def admit(limiter: Limiter, scopes: list[Scope], tokens: int = 1, reserve: int = 0) -> Ticket | None:
    rid = f"r{time.monotonic_ns()}"
    d = await limiter.admit(rid, scopes, tokens, [reserve] * len(scopes))
    return Ticket(rid, scopes, tokens, [reserve] * len(scopes), rate_headers(d)) if d.admitted else None


async def test_rpm_admits_exactly_the_limit_and_says_when_to_retry(limiter: Limiter) -> None:
    s = [scope("key:a", rpm=5)]
    results = await asyncio.gather(*(admit(limiter, s) for _ in range(8)))
    assert sum(r is not None for r in results) == 5
    d = await limiter.admit("late", s, 1, [0])
    assert not d.admitted and d.reason == "rpm" and 0 < d.retry_after <= 12.0
    headers = dict(rate_headers(d))
    assert headers[b"x-ratelimit-limit-requests"] == b"5"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    first = next(r for r in results if r is not None)
    assert dict(first.headers)[b"x-ratelimit-limit-requests"] == b"5"


async def test_tpm_is_charged_by_estimate_and_settled_with_real_usage(limiter: Limiter) -> None:
    s = [scope("key:t", tpm=1000)]
    a, b = await admit(limiter, s, 400), await admit(limiter, s, 400)
    assert a is not None and b is not None
    assert await admit(limiter, s, 400) is None  # 200 left
    await limiter.settle(a, 100, [0])  # it used 100 of the 400 charged: 300 come back
    await limiter.settle(b, 100, [0])
    assert await admit(limiter, s, 400) is not None  # 800 left, minus 400


async def test_concurrency_counts_requests_in_flight(limiter: Limiter) -> None:
    s = [scope("tenant:c", concurrency=2)]
    a, b = await admit(limiter, s), await admit(limiter, s)
    assert a is not None and b is not None
    refused = await limiter.admit("x", s, 1, [0])
    assert not refused.admitted and refused.reason == "concurrency"
    await limiter.settle(a, 1, [0])
    assert await admit(limiter, s) is not None


async def test_all_scopes_or_none(limiter: Limiter) -> None:
    """A request the tenant refuses charges nothing to its key."""
    key, tenant = scope("key:k", rpm=3), scope("tenant:full", rpm=1)
    assert await admit(limiter, [tenant]) is not None  # the tenant's one request
    for _ in range(3):
        assert await admit(limiter, [key, tenant]) is None
    assert all([await admit(limiter, [key]) for _ in range(3)])  # the key's three are intact


async def test_concurrent_requests_cannot_overspend_a_budget(limiter: Limiter) -> None:
    """LiteLLM #34732 / #40095: N requests checked against the spend before any of them settles all pass.
    Here each reserves its worst case at admission, so at most budget // worst fit at once."""
    s = [Scope("key:b", LimitSpec(budget=Budget(1000, "tokens", "month")), period="2026-12")]
    results = await asyncio.gather(*(admit(limiter, s, reserve=300) for _ in range(20)))
    admitted = [t for t in results if t is not None]
    assert len(admitted) == 3  # 3 x 300 <= 1000 < 4 x 300
    for t in admitted:
        await limiter.settle(t, 250, [250])  # real spend below the worst case: the rest comes back
    # 750 spent: two more of 100 fit (950), a third would make 1050.
    assert [await admit(limiter, s, reserve=100) is not None for _ in range(3)] == [True, True, False]


async def test_reservations_and_leases_expire_when_a_gateway_dies(limiter: Limiter) -> None:
    """A gateway that admitted and died never settles; after reservation_ttl (0.3 s here) it is as if the
    request never ran."""
    s = [Scope("key:d", LimitSpec(concurrency=1, budget=Budget(100, "tokens", "day")), period="d")]
    assert await admit(limiter, s, reserve=100) is not None  # never settled
    assert await admit(limiter, s, reserve=100) is None

    async def free() -> bool:
        return await admit(limiter, s, reserve=100) is not None

    await eventually(free, "the dead gateway's reservation to expire", within=5)


async def test_a_burst_wider_than_the_redis_pool_is_admitted(redis_url: str) -> None:  # noqa: F811
    """redis-py's asyncio pool holds 100 connections and refuses the 101st command at once ("Too many
    connections"); with `on_redis_error: closed` that made a burst's tail 503s while Redis was fine."""
    limiter = RedisLimiter(redis_url, ttl=5, prefix=f"t{time.monotonic_ns()}:")
    try:
        s = [scope("tenant:burst", rpm=10**6, concurrency=10**6)]
        tickets = await asyncio.gather(*(admit(limiter, s) for _ in range(500)))
        assert all(t is not None for t in tickets)
        assert limiter.batcher.batches <= 4  # the burst went out in pipelines of up to 256, not 500 calls
        await asyncio.gather(*(limiter.settle(t, 1, [0]) for t in tickets if t is not None))
        await limiter.batcher.close()  # settlements are not awaited: send them now
        assert await limiter.redis.zcard(f"{limiter.prefix}tenant:burst:c") == 0  # every lease back
    finally:
        await limiter.close()


async def test_an_admission_whose_caller_left_gives_back_what_it_took(redis_url: str) -> None:  # noqa: F811
    """A client that hangs up while its admission is on the wire: the script still runs in Redis, so its
    lease and tokens are handed back, not held until `reservation_ttl`."""
    limiter = RedisLimiter(redis_url, ttl=60, prefix=f"t{time.monotonic_ns()}:")
    try:
        s = [scope("tenant:gone", concurrency=1, tpm=1000)]
        left = asyncio.ensure_future(limiter.admit("r-gone", s, 900, [0]))
        await asyncio.sleep(0)  # one turn of the loop: the admission queues its call and waits
        assert limiter.batcher.sender is not None  # the call is on its way
        left.cancel()
        with pytest.raises(asyncio.CancelledError):
            await left
        await limiter.batcher.close()
        assert await admit(limiter, s, tokens=900) is not None  # the lease and the 900 tokens came back
    finally:
        await limiter.close()


async def test_redis_down_fails_closed_or_open_as_configured() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    for mode, expect in (("closed", ServiceUnavailableError), ("open", None)):
        cfg = parse_config(
            f"""
tenancy: {{redis: "{dead}", on_redis_error: {mode}, tenants: {{acme: {{rpm: 5}}}}}}
pools: [{{name: p, models: [m], endpoints: ["http://127.0.0.1:9"]}}]
"""
        )
        t = Tenancy(cfg)
        try:
            if expect is None:
                assert await t.admit(Tenant("acme", 0), "m", 100, 10) is None  # admitted, unlimited
            else:
                with pytest.raises(expect):
                    await t.admit(Tenant("acme", 0), "m", 100, 10)
        finally:
            await t.limiter.close()


async def test_tenancy_refuses_with_openai_headers() -> None:
    cfg = parse_config(
        """
tenancy: {tenants: {acme: {rpm: 1, tpm: 5000}}}
pools: [{name: p, models: [m], endpoints: ["http://127.0.0.1:9"]}]
"""
    )
    t = Tenancy(cfg)
    ticket = await t.admit(Tenant("acme", 0), "m", 400, 50)
    assert ticket is not None and ticket.tokens == 150  # 400 bytes / 4 + 50
    with pytest.raises(RateLimitError) as refused:
        await t.admit(Tenant("acme", 0), "m", 400, 50)
    e = refused.value
    assert e.status == 429 and e.retry_after is not None and 1 <= e.retry_after <= 60
    assert dict(e.headers)[b"x-ratelimit-limit-requests"] == b"1"
    assert await t.admit(Tenant("other", 0), "m", 400, 50) is None  # no limits: nothing charged


# ---- two gateway processes sharing one Redis -------------------------------------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    proc = spawn_sim(tmp_path_factory.mktemp("sim"), "--served-model-name", MODEL, "--time-scale", "50")
    yield proc
    proc.stop()


def _two_gateways(gateway_factory: GatewayFactory, sim: SimProcess, tenancy: str) -> list[str]:
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
keys:
  - {{name: game, key: sk-game}}
  - {{name: wallet, key: sk-wallet}}
tenancy:
{tenancy}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sim.url}]
"""
    return [gateway_factory(config).url for _ in range(2)]


def _db(url: str, n: int) -> str:
    """The same Redis, another database: each test starts from empty counters."""
    return url.rsplit("/", 1)[0] + f"/{n}"


async def _burst(urls: list[str], n: int, max_tokens: int = 1, key: str = "sk-game") -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as c:
        # ignore_eos: every answer spends its max_tokens, so what settles first never makes room for more.
        body = {"model": MODEL, "prompt": "hi", "max_tokens": max_tokens, "ignore_eos": True}
        headers = {"authorization": f"Bearer {key}"}
        return await asyncio.gather(
            *(c.post(f"{urls[i % len(urls)]}/v1/completions", json=body, headers=headers) for i in range(n))
        )


def test_two_gateways_sharing_redis_hold_limits_and_budgets_exactly(
    gateway_factory: GatewayFactory,
    sim: SimProcess,
    redis_url: str,  # noqa: F811
) -> None:
    """N requests at once against a limit of M, spread over two gateways: exactly M admitted. And LiteLLM
    #34732: a budget checked before spend is recorded lets a burst through; here a budget of 1000 tokens
    and requests whose worst case is ~300 admit 3 of a burst of 20."""
    tenants = "{game: {rpm: 7}, wallet: {budget: {amount: 1000, window: day}}}"
    urls = _two_gateways(gateway_factory, sim, f'  redis: "{_db(redis_url, 1)}"\n  tenants: {tenants}')
    responses = asyncio.run(_burst(urls, 30))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 7 and statuses.count(429) == 23
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "7"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["type"] == "RateLimitError"
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "7" and "x-ratelimit-reset-requests" in ok.headers

    # Worst case = body bytes (~80) + max_tokens 240 = ~320 tokens per request; each spends >= 241.
    responses = asyncio.run(_burst(urls, 20, max_tokens=240, key="sk-wallet"))
    admitted = [r for r in responses if r.status_code == 200]
    assert len(admitted) == 3, [r.status_code for r in responses]
    assert sum(r.json()["usage"]["total_tokens"] for r in admitted) <= 1000
    refused = next(r for r in responses if r.status_code == 429)
    assert "budget" in refused.json()["error"]["message"]


def test_a_burst_through_a_gateway_with_redis_limits_is_served_whole(
    gateway_factory: GatewayFactory,
    sim: SimProcess,
    redis_url: str,  # noqa: F811
) -> None:
    """The benchmark's lost requests (docs/benchmarks.md, Tenancy): a burst of 300 requests at one gateway
    whose limits live in Redis, every one within its limits, all answered 200."""
    tenancy = f'  redis: "{_db(redis_url, 2)}"\n  tenants: {{game: {{rpm: 100000, concurrency: 100000}}}}'
    url = _two_gateways(gateway_factory, sim, tenancy)[0]
    responses = asyncio.run(_burst([url], 300))
    failed = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not failed, failed[:3]


async def test_a_restart_keeps_what_the_budget_window_already_spent(tmp_path: Path) -> None:
    """Budgets are seeded from the ledger at start: a restart does not hand out the month again."""
    url = f"sqlite:///{tmp_path}/t.db"
    store = await open_store(url)
    now = time.time()
    row = UsageRow(at=now, request_id="r", tenant="acme", key_id=None, model="m", pool="p",
                   endpoint="e", status=200, prompt_tokens=600, cached_tokens=0, output_tokens=300,
                   latency_ms=1.0)  # fmt: skip
    old = UsageRow(**{**row.__dict__, "at": now - 40 * 86_400})  # last window's: not counted
    await store.write_usage([row, old])
    await store.close()
    cfg = parse_config(
        f"""
tenancy: {{database: "{url}", tenants: {{acme: {{budget: {{amount: 1000, window: month}}}}}}}}
pools: [{{name: p, models: [m], endpoints: ["http://127.0.0.1:9"]}}]
"""
    )
    t = Tenancy(cfg)
    await t.start()
    try:
        assert await t.admit(Tenant("acme", 0), "m", 50, 40) is not None  # 900 + 90 <= 1000
        with pytest.raises(RateLimitError):
            await t.admit(Tenant("acme", 0), "m", 50, 40)  # 990 + 90 > 1000
    finally:
        await t.stop()
