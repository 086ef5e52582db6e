"""Tenancy: where issued keys and the usage ledger live, shared counters (Redis), tenants' limits and
budgets, prices, the ledger's batching and the response cache."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from fleetgate.config.fields import STRICT, check_name, seconds
from fleetgate.config.problems import invalid


class BudgetConfig(BaseModel):
    """Spend allowed per window: tokens (prompt + output) or money (`usd`, priced by `tenancy.prices`)."""

    model_config = STRICT

    amount: float = Field(gt=0, allow_inf_nan=False, description="Tokens or USD per window.")
    unit: Literal["tokens", "usd"] = Field(default="tokens", description="tokens | usd.")
    window: Literal["day", "week", "month", "total"] = Field(
        default="month", description="day | week | month (UTC calendar) | total."
    )


class ScopeLimitsConfig(BaseModel):
    """Limits of one tenant (all its keys together); absent = unlimited."""

    model_config = STRICT

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(
        default=None, ge=1, description="Tokens per minute (prompt + output; estimated, then settled)."
    )
    concurrency: int | None = Field(default=None, ge=1, description="Requests in flight at once.")
    budget: BudgetConfig | None = Field(default=None, description="Spend per window.")


class PriceConfig(BaseModel):
    """USD per million tokens of one model; cached prompt tokens are priced apart."""

    model_config = STRICT

    prompt: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="Uncached prompt tokens.")
    cached_prompt: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Cached prompt tokens (default: `prompt`)."
    )
    output: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="Output tokens.")


class LedgerConfig(BaseModel):
    """The usage ledger's batching: rows are buffered in memory and written off the request path."""

    model_config = STRICT

    batch_size: int = Field(default=500, ge=1, description="Rows per write.")
    interval: float = seconds(1.0, "Seconds between writes when batches do not fill.")
    buffer: int = Field(
        default=100_000, ge=1, description="Rows held while the database is slow or away (overflow counted)."
    )


class ResponseCacheConfig(BaseModel):
    """Exact-match cache of answers, for requests that ask for it (`x-fleetgate-cache: on`) or, with
    `deterministic: true`, for every request at temperature 0."""

    model_config = STRICT

    enabled: bool = Field(default=False, description="Serve and store cached answers.")
    deterministic: bool = Field(default=False, description="Also cache every request with temperature 0.")
    ttl: float = seconds(300.0, "Seconds an answer stays.")
    max_entries: int = Field(default=10_000, ge=1, description="Answers kept in memory (oldest out).")
    max_entry_bytes: int = Field(default=1_048_576, ge=1, description="Largest answer stored.")
    shared_across_tenants: bool = Field(
        default=False, description="One tenant's answer may serve another (off: isolated per tenant)."
    )


class TenancyConfig(BaseModel):
    """Issued keys, shared limits, budgets and the usage ledger (docs/tenancy.md)."""

    model_config = STRICT

    database: str | None = Field(
        default=None,
        description="sqlite:///path (one machine) or postgresql://user:pass@host/db (several replicas); "
        "absent = no issued keys and no ledger.",
    )
    redis: str | None = Field(
        default=None,
        description="redis://host:port/db shared by replicas for limits and budgets; absent = in memory.",
    )
    on_redis_error: Literal["open", "closed"] = Field(
        default="closed",
        description="When Redis cannot be reached: admit without limits (open) or refuse with 503 (closed).",
    )
    refresh_interval: float = seconds(0.25, "Seconds between polls of the key store's version row.")
    reservation_ttl: float = seconds(
        900.0, "Seconds a reservation (budget, concurrency) outlives a gateway that died holding it."
    )
    tenants: dict[str, ScopeLimitsConfig] = Field(
        default_factory=dict,
        description="Limits per tenant (all its keys together); these names label per-tenant metrics.",
    )
    prices: dict[str, PriceConfig] = Field(
        default_factory=dict, description="USD per million tokens, by public model name (for usd budgets)."
    )
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    cache: ResponseCacheConfig = Field(default_factory=ResponseCacheConfig)
    fair_share: bool = Field(
        default=True,
        description="Within a priority, a saturated pool serves tenants by tokens served (start-time "
        "fair queuing), not first come first served.",
    )

    @field_validator("tenants")
    @classmethod
    def _names(cls, value: dict[str, ScopeLimitsConfig]) -> dict[str, ScopeLimitsConfig]:
        for name in value:
            check_name(name)
        return value

    @field_validator("database")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql", "postgres:")):
            raise ValueError("must be a sqlite:///path or postgresql://... URL")
        return value

    @field_validator("redis")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://host:port/db URL")
        return value

    @model_validator(mode="after")
    def _usd_needs_prices(self) -> Self:
        for name, limits in self.tenants.items():
            if limits.budget is not None and limits.budget.unit == "usd" and not self.prices:
                raise invalid((("tenants", name, "budget", "unit"), "a usd budget needs `tenancy.prices`"))
        return self
