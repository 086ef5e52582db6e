"""One usage ledger row: plain values, no database types (the gateway builds these on every request)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["UsageRow"]


@dataclass(frozen=True)
class UsageRow:
    at: float
    request_id: str
    tenant: str
    key_id: str | None
    model: str
    pool: str
    endpoint: str
    status: int
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    latency_ms: float
    cache_hit: bool = False
    cost: float = 0.0

    def values(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "day": time.strftime("%Y-%m-%d", time.gmtime(self.at)),
            "request_id": self.request_id,
            "tenant": self.tenant,
            "key_id": self.key_id,
            "model": self.model,
            "pool": self.pool,
            "endpoint": self.endpoint,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "latency_ms": self.latency_ms,
            "cache_hit": self.cache_hit,
            "cost": self.cost,
        }
