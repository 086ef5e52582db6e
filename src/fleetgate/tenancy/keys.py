"""API keys as the store keeps them: a random secret shown once, kept only as its SHA-256 digest.

A fast hash is right here: the secrets are 256-bit random strings, not passwords, so there is nothing to
guess and every request can hash its key in a microsecond.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SECRET_PREFIX", "Budget", "KeyRecord", "LimitSpec", "digest", "new_secret"]

SECRET_PREFIX = "fg-"
Window = Literal["day", "week", "month", "total"]
Unit = Literal["tokens", "usd"]


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class Budget:
    """How much a key or tenant may spend per window: tokens (prompt + output) or money (a price table)."""

    amount: float
    unit: Unit = "tokens"
    window: Window = "month"

    def period(self, now: float) -> str:
        """The window that `now` (Unix seconds) falls in, as a counter's name."""
        t = time.gmtime(now)
        if self.window == "day":
            return time.strftime("%Y-%m-%d", t)
        if self.window == "week":
            return time.strftime("%G-W%V", t)
        if self.window == "month":
            return time.strftime("%Y-%m", t)
        return "total"

    def start(self, now: float) -> float:
        """When the window that `now` falls in began (Unix seconds, UTC)."""
        t = time.gmtime(now)
        midnight = now - (t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec) - (now % 1)
        if self.window == "day":
            return midnight
        if self.window == "week":
            return midnight - t.tm_wday * 86_400
        if self.window == "month":
            return midnight - (t.tm_mday - 1) * 86_400
        return 0.0


@dataclass(frozen=True)
class LimitSpec:
    """Limits of one scope (a key or a tenant); None = unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget: Budget | None = None

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.concurrency is None and self.budget is None


@dataclass(frozen=True)
class KeyRecord:
    """One issued key (never its secret)."""

    id: str
    tenant: str
    name: str
    prefix: str  # the secret's first characters, to tell keys apart in listings
    priority: int = 0
    models: tuple[str, ...] = ()  # empty = every model
    pools: tuple[str, ...] = ()  # empty = every pool
    limits: LimitSpec = field(default_factory=LimitSpec)
    expires_at: float | None = None  # Unix seconds
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    revoked_at: float | None = None

    def live(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def allows(self, model: str, pool: str) -> bool:
        return (not self.models or model in self.models) and (not self.pools or pool in self.pools)

    def view(self) -> dict[str, Any]:
        """As the admin API and `keys list` show it."""
        lim = self.limits
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "prefix": self.prefix,
            "priority": self.priority,
            "models": list(self.models),
            "pools": list(self.pools),
            "rpm": lim.rpm,
            "tpm": lim.tpm,
            "concurrency": lim.concurrency,
            "budget": None
            if lim.budget is None
            else {"amount": lim.budget.amount, "unit": lim.budget.unit, "window": lim.budget.window},
            "expires_at": self.expires_at,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }
