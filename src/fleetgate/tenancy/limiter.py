"""Limits and budgets per scope (a key, a tenant): requests and tokens per minute, requests in flight, and
spend per window, decided for all of a request's scopes at once (all admitted or none charged).

Rates are token buckets (capacity = the per-minute limit, refilled continuously), so "100 RPM" admits a
burst of 100 and then one every 0.6 s. Tokens are charged at admission from an estimate (prompt bytes / 4 +
`max_tokens`) and settled with the real usage: the difference goes back into (or comes out of) the bucket.
Budgets reserve the request's worst-case spend at admission and settle to the real spend at the end, so N
concurrent requests can never together spend more than the budget left (a check-then-spend design lets
them all through: LiteLLM #34732, #40095). Reservations and in-flight leases carry an expiry, so a gateway
that dies holding them gives them back after `reservation_ttl`. Amounts are integers (tokens, or
micro-dollars) so the counters never drift (LiteLLM #27639's phantom 429s came from float counters).

`MemoryLimiter` serves one replica (one event loop: each call runs without awaiting, so it is atomic).
`RedisLimiter` serves several: one Lua script per admission and one per settlement, each atomic on the
Redis server and timed by the server's clock, so four replicas sharing "100 RPM" admit 100, not 400. The
calls of concurrent requests share pipelines (`batcher`); settlements are sent without waiting for them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetgate.tenancy.batcher import ScriptBatcher
from fleetgate.tenancy.keys import LimitSpec

__all__ = [
    "Decision",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
    "Scope",
    "Ticket",
    "rate_headers",
]

MICRO = 1_000_000  # usd amounts are counted in micro-dollars


@dataclass(frozen=True)
class Scope:
    """One thing a request counts against: `key:<id>` or `tenant:<name>`."""

    name: str
    limits: LimitSpec
    period: str = ""  # the budget window's name at admission ("2026-12")


@dataclass
class Ticket:
    """An admitted request's charges, to settle when it ends."""

    rid: str
    scopes: Sequence[Scope]
    tokens: int  # estimated tokens charged to the TPM buckets
    reserved: list[int]  # per scope: budget amount reserved (tokens or micro-dollars)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    settled: bool = False


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str = ""  # rpm | tpm | concurrency | budget, when refused
    scope: str = ""
    retry_after: float = 0.0  # seconds
    # The most constraining figures among the scopes: (limit, remaining, reset seconds) for requests/tokens.
    requests: tuple[int, int, float] | None = None
    tokens: tuple[int, int, float] | None = None


def amount(spec: LimitSpec, tokens: int, usd: float) -> int:
    """A spend in the budget's own unit: tokens, or micro-dollars."""
    b = spec.budget
    if b is None:
        return 0
    return tokens if b.unit == "tokens" else math.ceil(usd * MICRO)


def _reset(seconds: float) -> bytes:
    """OpenAI's reset format: 1s, 6m0s, 20ms."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms".encode()
    whole = math.ceil(seconds)
    m, s = divmod(whole, 60)
    return f"{m}m{s}s".encode() if m else f"{s}s".encode()


def rate_headers(d: Decision) -> list[tuple[bytes, bytes]]:
    """`x-ratelimit-*` as OpenAI sends them."""
    out: list[tuple[bytes, bytes]] = []
    for kind, figures in (("requests", d.requests), ("tokens", d.tokens)):
        if figures is None:
            continue
        limit, remaining, reset = figures
        out += [
            (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, remaining)).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), _reset(reset)),
        ]
    return out


class Limiter(Protocol):
    async def admit(
        self, rid: str, scopes: Sequence[Scope], tokens: int, reserve: Sequence[int]
    ) -> Decision: ...

    async def settle(self, ticket: Ticket, tokens: int, spend: Sequence[int]) -> None:
        """Give back the estimate and the reservation, charge the real use. May return before the store
        has applied it (Redis): this limiter's later calls still see it; `close` applies what is left."""
        ...

    async def seed(self, scope: Scope, spent: int) -> None:
        """What the scope spent in its window before this process counted (from the ledger), unless the
        counter already knows."""
        ...

    async def close(self) -> None: ...


# ---- one replica ------------------------------------------------------------------------------------------
@dataclass
class _Bucket:
    level: float
    at: float  # ms

    def refill(self, per_minute: int, now: float) -> float:
        self.level = min(float(per_minute), self.level + (now - self.at) * per_minute / 60_000)
        self.at = now
        return self.level


@dataclass
class _State:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    leases: dict[str, float] = field(default_factory=dict)  # rid -> expiry ms
    spent: dict[str, int] = field(default_factory=dict)  # period -> amount
    reservations: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # rid -> period, amt, exp


class MemoryLimiter:
    """Limits for one replica; the same rules as the Redis script, on this process's clock."""

    def __init__(self, ttl: float) -> None:
        self.ttl_ms = ttl * 1000
        self.states: dict[str, _State] = {}

    def _now(self) -> float:
        return time.monotonic() * 1000

    def _state(self, name: str) -> _State:
        s = self.states.get(name)
        if s is None:
            s = self.states[name] = _State()
        return s

    async def admit(self, rid: str, scopes: Sequence[Scope], tokens: int, reserve: Sequence[int]) -> Decision:
        now = self._now()
        req_fig: tuple[int, int, float] | None = None
        tok_fig: tuple[int, int, float] | None = None
        for scope, want in zip(scopes, reserve, strict=True):
            lim, s = scope.limits, self._state(scope.name)
            if lim.rpm is not None:
                s.requests = s.requests or _Bucket(lim.rpm, now)
                level = s.requests.refill(lim.rpm, now)
                if level < 1:
                    wait = (1 - level) * 60 / lim.rpm
                    return Decision(False, "rpm", scope.name, wait, (lim.rpm, 0, wait), tok_fig)
            if lim.tpm is not None:
                s.tokens = s.tokens or _Bucket(lim.tpm, now)
                level = s.tokens.refill(lim.tpm, now)
                need = min(tokens, lim.tpm)
                if level < need:
                    wait = (need - level) * 60 / lim.tpm
                    return Decision(False, "tpm", scope.name, wait, req_fig, (lim.tpm, int(level), wait))
            if lim.concurrency is not None:
                for r in [r for r, exp in s.leases.items() if exp <= now]:
                    del s.leases[r]
                if len(s.leases) >= lim.concurrency:
                    return Decision(False, "concurrency", scope.name, 1.0, req_fig, tok_fig)
            if lim.budget is not None:
                for r in [r for r, (_, _, exp) in s.reservations.items() if exp <= now]:
                    del s.reservations[r]
                held = sum(a for p, a, _ in s.reservations.values() if p == scope.period)
                if s.spent.get(scope.period, 0) + held + want > _budget_units(scope.limits):
                    return Decision(False, "budget", scope.name, _until_next(scope), req_fig, tok_fig)
            req_fig = _tighter(req_fig, lim.rpm, s.requests, now)
            tok_fig = _tighter(tok_fig, lim.tpm, s.tokens, now)
        for scope, want in zip(scopes, reserve, strict=True):
            lim, s = scope.limits, self.states[scope.name]
            if s.requests is not None and lim.rpm is not None:
                s.requests.level -= 1
            if s.tokens is not None and lim.tpm is not None:
                s.tokens.level -= tokens
            if lim.concurrency is not None:
                s.leases[rid] = now + self.ttl_ms
            if lim.budget is not None:
                s.reservations[rid] = (scope.period, want, now + self.ttl_ms)
        req_fig = _after(req_fig, 1)
        tok_fig = _after(tok_fig, tokens)
        return Decision(True, requests=req_fig, tokens=tok_fig)

    async def settle(self, ticket: Ticket, tokens: int, spend: Sequence[int]) -> None:
        now = self._now()
        for scope, spent in zip(ticket.scopes, spend, strict=True):
            lim, s = scope.limits, self._state(scope.name)
            if s.tokens is not None and lim.tpm is not None:
                s.tokens.refill(lim.tpm, now)
                s.tokens.level = min(float(lim.tpm), s.tokens.level + ticket.tokens - tokens)
            s.leases.pop(ticket.rid, None)
            if lim.budget is not None:
                s.reservations.pop(ticket.rid, None)
                s.spent[scope.period] = s.spent.get(scope.period, 0) + spent

    async def seed(self, scope: Scope, spent: int) -> None:
        self._state(scope.name).spent.setdefault(scope.period, spent)

    async def close(self) -> None:
        return None


def _budget_units(spec: LimitSpec) -> int:
    b = spec.budget
    assert b is not None
    return int(b.amount) if b.unit == "tokens" else math.floor(b.amount * MICRO)


def _until_next(scope: Scope) -> float:
    """Seconds until the budget's window turns (a day at most is worth telling a client)."""
    b = scope.limits.budget
    if b is None or b.window == "total":
        return 86_400.0
    now = time.time()
    return float(min(86_400, 86_400 - now % 86_400))


def _tighter(
    figures: tuple[int, int, float] | None, limit: int | None, bucket: _Bucket | None, now: float
) -> tuple[int, int, float] | None:
    if limit is None or bucket is None:
        return figures
    mine = (limit, int(bucket.level), 0.0)
    if figures is None or mine[1] < figures[1]:
        return mine
    return figures


def _after(figures: tuple[int, int, float] | None, used: int) -> tuple[int, int, float] | None:
    """Remaining after this request, and when the bucket is full again."""
    if figures is None:
        return None
    limit, level, _ = figures
    remaining = level - used
    return limit, remaining, (limit - remaining) * 60 / limit


# ---- several replicas: Redis ------------------------------------------------------------------------------
# KEYS, per scope (5): bucket hash, leases zset, budget hash {spent, reserved}, reservation expiries zset,
# reservation amounts hash. ARGV: rid, ttl_ms, nscopes, then per scope (6): rpm, tpm, concurrency,
# budget (0 = none), tokens, reserve. Returns {1, req_limit, req_level, tok_limit, tok_level} or
# {0, scope index, reason, wait ms}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local levels = {}
local rl, rlim, tl, tlim = -1, 0, -1, 0
for i = 0, n - 1 do
  local k, a = i * 5, 3 + i * 6
  local rpm, tpm, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local budget, tokens, reserve = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local lv = {}
  if rpm > 0 or tpm > 0 then
    local b = redis.call('HMGET', KEYS[k + 1], 'rl', 'rt', 'tl', 'tt')
    if rpm > 0 then
      local lvl = tonumber(b[1]) or rpm
      lvl = math.min(rpm, lvl + (now - (tonumber(b[2]) or now)) * rpm / 60000)
      if lvl < 1 then return {0, i, 'rpm', math.ceil((1 - lvl) * 60000 / rpm)} end
      lv.r = lvl
      if rl < 0 or lvl < rl then rl, rlim = lvl, rpm end
    end
    if tpm > 0 then
      local lvl = tonumber(b[3]) or tpm
      lvl = math.min(tpm, lvl + (now - (tonumber(b[4]) or now)) * tpm / 60000)
      local need = math.min(tokens, tpm)
      if lvl < need then return {0, i, 'tpm', math.ceil((need - lvl) * 60000 / tpm)} end
      lv.t = lvl
      if tl < 0 or lvl < tl then tl, tlim = lvl, tpm end
    end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 2]) >= conc then return {0, i, 'concurrency', 1000} end
  end
  if budget > 0 then
    local expired = redis.call('ZRANGEBYSCORE', KEYS[k + 4], '-inf', now)
    for _, r in ipairs(expired) do
      local amt = tonumber(redis.call('HGET', KEYS[k + 5], r) or '0')
      redis.call('HINCRBY', KEYS[k + 3], 'reserved', -amt)
      redis.call('HDEL', KEYS[k + 5], r)
    end
    if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', now) end
    local st = redis.call('HMGET', KEYS[k + 3], 'spent', 'reserved')
    if (tonumber(st[1]) or 0) + (tonumber(st[2]) or 0) + reserve > budget then
      return {0, i, 'budget', 0}
    end
  end
  levels[i] = lv
end
for i = 0, n - 1 do
  local k, a = i * 5, 3 + i * 6
  local conc, budget = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local tokens, reserve = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local lv = levels[i]
  if lv.r then redis.call('HSET', KEYS[k + 1], 'rl', lv.r - 1, 'rt', now) end
  if lv.t then redis.call('HSET', KEYS[k + 1], 'tl', lv.t - tokens, 'tt', now) end
  if lv.r or lv.t then redis.call('PEXPIRE', KEYS[k + 1], 120000) end
  if conc > 0 then
    redis.call('ZADD', KEYS[k + 2], now + ttl, rid)
    redis.call('PEXPIRE', KEYS[k + 2], ttl * 2)
  end
  if budget > 0 then
    redis.call('ZADD', KEYS[k + 4], now + ttl, rid)
    redis.call('HSET', KEYS[k + 5], rid, reserve)
    redis.call('HINCRBY', KEYS[k + 3], 'reserved', reserve)
  end
end
local rem_r, rem_t = -1, -1
if rl >= 0 then rem_r = math.floor(rl - 1) end
if tl >= 0 then rem_t = math.floor(tl - tonumber(ARGV[3 + 5])) end
return {1, rlim, rem_r, tlim, rem_t}
"""

# KEYS as for _ADMIT. ARGV: rid, nscopes, then per scope (4): tpm, tokens charged, tokens used, spend.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, n = ARGV[1], tonumber(ARGV[2])
for i = 0, n - 1 do
  local k, a = i * 5, 2 + i * 4
  local tpm, charged = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local used, spend = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if tpm > 0 then
    local b = redis.call('HMGET', KEYS[k + 1], 'tl', 'tt')
    local lvl = tonumber(b[1]) or tpm
    lvl = math.min(tpm, lvl + (now - (tonumber(b[2]) or now)) * tpm / 60000)
    redis.call('HSET', KEYS[k + 1], 'tl', math.min(tpm, lvl + charged - used), 'tt', now)
  end
  redis.call('ZREM', KEYS[k + 2], rid)
  local amt = redis.call('HGET', KEYS[k + 5], rid)
  if amt then
    redis.call('HDEL', KEYS[k + 5], rid)
    redis.call('ZREM', KEYS[k + 4], rid)
    redis.call('HINCRBY', KEYS[k + 3], 'reserved', -tonumber(amt))
  end
  if spend > 0 then redis.call('HINCRBY', KEYS[k + 3], 'spent', spend) end
end
return 1
"""


def _keys(prefix: str, scope: Scope) -> list[str]:
    base = f"{prefix}{scope.name}"
    period = f"{base}:{scope.period}"
    return [f"{base}:b", f"{base}:c", f"{period}:s", f"{period}:re", f"{period}:ra"]


class RedisLimiter:
    """Limits shared by every replica through one Redis (redis-py's asyncio client). Calls go through a
    `ScriptBatcher`: a burst shares one connection and one pipeline per round trip. Settlements are not
    awaited: the request has ended, nobody waits for the reply, and a later call from this process is sent
    after them (one batch in flight at a time, in order), so this replica never reads its own counters
    stale; `close` sends what is still queued."""

    ADMIT, SETTLE = 0, 1

    def __init__(self, url: str, ttl: float, prefix: str = "fg:") -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.ttl_ms = int(ttl * 1000)
        self.prefix = prefix
        self.batcher = ScriptBatcher(self.redis, [_ADMIT, _SETTLE])

    async def admit(self, rid: str, scopes: Sequence[Scope], tokens: int, reserve: Sequence[int]) -> Decision:
        keys: list[str] = []
        args: list[str | int] = [rid, self.ttl_ms, len(scopes)]
        for scope, want in zip(scopes, reserve, strict=True):
            lim = scope.limits
            keys += _keys(self.prefix, scope)
            budget = _budget_units(lim) if lim.budget is not None else 0
            args += [lim.rpm or 0, lim.tpm or 0, lim.concurrency or 0, budget, tokens, want]
        reply = self.batcher.submit(self.ADMIT, keys, args)
        try:
            out = await asyncio.shield(reply)
        except asyncio.CancelledError:
            # The caller left (its client hung up) while the script may still run: give back what it takes.
            reply.add_done_callback(lambda f: self._undo(f, rid, scopes, tokens))
            raise
        if int(out[0]) == 1:
            _, rlim, rrem, tlim, trem = (int(v) for v in out)
            req = (rlim, rrem, (rlim - rrem) * 60 / rlim) if rrem >= 0 and rlim else None
            tok = (tlim, trem, (tlim - trem) * 60 / tlim) if trem >= 0 and tlim else None
            return Decision(True, requests=req, tokens=tok)
        index, reason, wait_ms = int(out[1]), _text(out[2]), int(out[3])
        scope = scopes[index]
        wait = wait_ms / 1000 if reason != "budget" else _until_next(scope)
        lim = scope.limits
        req = (lim.rpm, 0, wait) if reason == "rpm" and lim.rpm else None
        tok = (lim.tpm, 0, wait) if reason == "tpm" and lim.tpm else None
        return Decision(False, reason, scope.name, wait, req, tok)

    def _undo(self, reply: asyncio.Future[Any], rid: str, scopes: Sequence[Scope], tokens: int) -> None:
        """An admission nobody will use: its tokens back, its lease and reservation released, no spend (the
        request per minute stays counted: it did arrive)."""
        if reply.cancelled() or reply.exception() is not None or int(reply.result()[0]) != 1:
            return
        self._settle(Ticket(rid, scopes, tokens, [0] * len(scopes)), 0, [0] * len(scopes))

    async def settle(self, ticket: Ticket, tokens: int, spend: Sequence[int]) -> None:
        self._settle(ticket, tokens, spend)

    def _settle(self, ticket: Ticket, tokens: int, spend: Sequence[int]) -> None:
        keys: list[str] = []
        args: list[str | int] = [ticket.rid, len(ticket.scopes)]
        for scope, spent in zip(ticket.scopes, spend, strict=True):
            keys += _keys(self.prefix, scope)
            args += [scope.limits.tpm or 0, ticket.tokens, tokens, spent]
        self.batcher.cast(self.SETTLE, keys, args)

    async def seed(self, scope: Scope, spent: int) -> None:
        await self.redis.hsetnx(_keys(self.prefix, scope)[2], "spent", spent)

    async def close(self) -> None:
        await self.batcher.close()
        await self.redis.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
