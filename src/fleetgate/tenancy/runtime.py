"""What the gateway holds for tenancy: the key store and its cache, the limiter, the ledger, prices.

Per request: `admit` (after the body is validated, before the flow queue) charges the key's and the
tenant's limits and budgets at once or refuses with 429; `finish` (after the answer ended) settles the
charges with the real usage and queues the ledger row. Neither reads the database.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetgate.admission.auth import Tenant
from fleetgate.config import FleetConfig, PriceConfig, ScopeLimitsConfig
from fleetgate.protocol import RateLimitError, ServiceUnavailableError
from fleetgate.tenancy.cache import MemoryCache, RedisCache, ResponseCache, cache_key
from fleetgate.tenancy.keycache import KeyCache
from fleetgate.tenancy.keys import Budget, LimitSpec
from fleetgate.tenancy.ledger import Ledger
from fleetgate.tenancy.limiter import (
    MICRO,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    Scope,
    Ticket,
    amount,
    rate_headers,
)
from fleetgate.tenancy.rows import UsageRow

if TYPE_CHECKING:
    from fleetgate.tenancy.store import KeyStore

__all__ = ["MissingExtraError", "Tenancy", "Usage", "limit_spec"]

log = logging.getLogger("fleetgate.tenancy")


class MissingExtraError(RuntimeError):
    """The fleet file asks for tenancy parts whose packages are not installed."""


_NEEDS_EXTRA = "tenancy.{} needs the tenancy extra: pip install 'fleetgate[tenancy]' ({})"


def limit_spec(c: ScopeLimitsConfig) -> LimitSpec:
    b = c.budget
    budget = None if b is None else Budget(b.amount, b.unit, b.window)
    return LimitSpec(c.rpm, c.tpm, c.concurrency, budget)


@dataclass(frozen=True)
class Usage:
    """Tokens of one answer as the ledger and the settlement count them."""

    prompt: int
    cached: int
    output: int

    @classmethod
    def of(cls, usage: Mapping[str, object] | None) -> Usage | None:
        if not usage:
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return cls(_int(usage.get("prompt_tokens")), _int(cached), _int(usage.get("completion_tokens")))


def _int(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def cost(price: PriceConfig | None, u: Usage) -> float:
    """USD of an answer: uncached and cached prompt tokens priced apart."""
    if price is None:
        return 0.0
    cached_price = price.prompt if price.cached_prompt is None else price.cached_prompt
    return ((u.prompt - u.cached) * price.prompt + u.cached * cached_price + u.output * price.output) / 1e6


class Tenancy:
    def __init__(self, config: FleetConfig) -> None:
        tc = config.tenancy
        self.config = tc
        self.cache = KeyCache(tc.refresh_interval) if tc.database is not None else None
        self.store: KeyStore | None = None
        self.ledger: Ledger | None = None
        try:
            self.limiter: Limiter = (
                RedisLimiter(tc.redis, tc.reservation_ttl) if tc.redis else MemoryLimiter(tc.reservation_ttl)
            )
        except ImportError as e:
            raise MissingExtraError(_NEEDS_EXTRA.format("redis", e)) from None
        cc = tc.cache
        self.responses: ResponseCache | None = None
        if cc.enabled:
            self.responses = RedisCache(tc.redis, cc.ttl) if tc.redis else MemoryCache(cc.ttl, cc.max_entries)
        self.tenant_limits = {name: limit_spec(c) for name, c in tc.tenants.items()}
        self.prices = tc.prices
        # Tenants that get their own metric label; anyone else counts as "other" (names are unbounded).
        self.named = frozenset(tc.tenants) | {k.name for k in config.keys} | {"anonymous", "none"}
        self.on_write: Callable[[int], None] = lambda n: None
        self.on_drop: Callable[[int], None] = lambda n: None
        self.on_limited: Callable[[str, str], None] = lambda tenant, reason: None
        self.redis_failures = 0

    def label(self, tenant: str) -> str:
        return tenant if tenant in self.named else "other"

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        tc = self.config
        if tc.database is None:
            return
        try:
            from fleetgate.tenancy.store import open_store
        except ImportError as e:
            raise MissingExtraError(_NEEDS_EXTRA.format("database", e)) from None
        self.store = await open_store(tc.database)
        assert self.cache is not None
        self.cache.store = self.store
        await self.cache.start()
        await self._seed_budgets()
        lc = tc.ledger
        self.ledger = Ledger(
            self.store, lc.batch_size, lc.interval, lc.buffer, on_write=self.on_write, on_drop=self.on_drop
        )
        self.ledger.start()

    async def _seed_budgets(self) -> None:
        """Budgets count from the ledger's spend in their window, so a restart does not reset them (one
        query per budget, at start only; with Redis, counters that exist already win)."""
        assert self.store is not None and self.cache is not None
        now = time.time()
        scopes: list[tuple[str, str, LimitSpec]] = [
            ("tenant", name, spec) for name, spec in self.tenant_limits.items() if spec.budget is not None
        ]
        keys = self.cache.keys.values()
        scopes += [("key_id", k.id, k.limits) for k in keys if k.limits.budget is not None]
        for column, value, spec in scopes:
            b = spec.budget
            assert b is not None
            spent = await self.store.spent(column, value, b.start(now), b.unit)
            name = f"tenant:{value}" if column == "tenant" else f"key:{value}"
            units = int(spent) if b.unit == "tokens" else math.ceil(spent * MICRO)
            try:
                await self.limiter.seed(Scope(name, spec, b.period(now)), units)
            except Exception as e:
                log.warning("could not seed the budget of %s: %s", name, e)

    async def stop(self) -> None:
        """After the drain: every ledger row written, then the connections closed."""
        if self.cache is not None:
            await self.cache.stop()
        if self.ledger is not None:
            await self.ledger.stop()
        if self.store is not None:
            await self.store.close()
        await self.limiter.close()
        if self.responses is not None:
            await self.responses.close()

    # ---- per request -----------------------------------------------------------------------------------
    def cache_key(self, path: str, body: dict[str, Any], tenant: str, asked: bytes | None) -> str | None:
        """The request's cache key when its answer may come from (and go to) the cache: it asks
        (`x-fleetgate-cache: on`), or `deterministic` is set and it samples at temperature 0; never when it
        says `off`."""
        cc = self.config.cache
        if self.responses is None or asked == b"off":
            return None
        if asked != b"on" and not (cc.deterministic and body.get("temperature") in (0, 0.0)):
            return None
        return cache_key(path, body, None if cc.shared_across_tenants else tenant)

    def scopes(self, tenant: Tenant) -> list[Scope]:
        now = time.time()
        out: list[Scope] = []
        if tenant.key is not None and not tenant.key.limits.empty:
            spec = tenant.key.limits
            out.append(Scope(f"key:{tenant.key.id}", spec, spec.budget.period(now) if spec.budget else ""))
        spec = self.tenant_limits.get(tenant.name, LimitSpec())
        if not spec.empty:
            out.append(Scope(f"tenant:{tenant.name}", spec, spec.budget.period(now) if spec.budget else ""))
        return out

    async def admit(self, tenant: Tenant, model: str, prompt_bytes: int, max_output: int) -> Ticket | None:
        """Charge the request to its key's and tenant's limits, or raise 429 (503 when Redis is down and
        `on_redis_error: closed`). Tokens are estimated as prompt bytes / 4 + `max_output`; budgets reserve
        the worst case: a token per prompt byte (no tokenizer makes more) and every output token."""
        scopes = self.scopes(tenant)
        if not scopes:
            return None
        estimate = math.ceil(prompt_bytes / 4) + max_output
        worst = Usage(prompt_bytes, 0, max_output)
        worst_usd = cost(self.prices.get(model), worst)
        reserve = [amount(s.limits, prompt_bytes + max_output, worst_usd) for s in scopes]
        rid = os.urandom(12).hex()
        try:
            decision = await self.limiter.admit(rid, scopes, estimate, reserve)
        except Exception as e:  # Redis unreachable or failing
            self.redis_failures += 1
            if self.redis_failures == 1 or self.redis_failures % 1000 == 0:
                log.error("limits store unreachable (%s): %s", self.config.on_redis_error, e)
            if self.config.on_redis_error == "open":
                return None
            raise ServiceUnavailableError("rate limits cannot be checked now; retry shortly") from None
        headers = rate_headers(decision)
        if not decision.admitted:
            self.on_limited(self.label(tenant.name), decision.reason)
            which = "key" if decision.scope.startswith("key:") else f"tenant '{tenant.name}'"
            err = RateLimitError(
                _refusal(decision.reason, which), retry_after=max(1, math.ceil(decision.retry_after))
            )
            err.headers = headers
            raise err
        return Ticket(rid, scopes, estimate, reserve, headers)

    async def settle(self, ticket: Ticket, model: str, used: Usage) -> None:
        """The real usage replaces the estimate and the reservation."""
        if ticket.settled:
            return
        ticket.settled = True
        usd = cost(self.prices.get(model), used)
        total = used.prompt + used.output
        spend = [amount(s.limits, total, usd) for s in ticket.scopes]
        try:
            await self.limiter.settle(ticket, total, spend)
        except Exception as e:  # the reservation expires on its own after reservation_ttl
            log.warning("could not settle a request's limits: %s", e)

    def record(self, row: UsageRow) -> None:
        if self.ledger is not None:
            self.ledger.record(row)


def _refusal(reason: str, which: str) -> str:
    return {
        "rpm": f"rate limit reached: requests per minute of this {which}",
        "tpm": f"rate limit reached: tokens per minute of this {which}",
        "concurrency": f"too many requests in flight for this {which}",
        "budget": f"budget exhausted for this {which}",
    }.get(reason, f"limit reached for this {which}")
