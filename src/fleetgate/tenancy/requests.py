"""What an operator sends to issue a key (admin API body, `fleetgate keys create` flags): validated once by
pydantic at the edge, then plain values."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetgate.config.fields import check_name
from fleetgate.tenancy.keys import Budget, LimitSpec

__all__ = ["KeyRequest"]


class BudgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: float = Field(gt=0, allow_inf_nan=False)
    unit: Literal["tokens", "usd"] = "tokens"
    window: Literal["day", "week", "month", "total"] = "month"


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str
    name: str = ""
    priority: int = 0
    models: list[str] = Field(default_factory=list)
    pools: list[str] = Field(default_factory=list)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    budget: BudgetRequest | None = None
    expires_at: float | None = Field(default=None, description="Unix seconds.")
    expires_in: float | None = Field(default=None, gt=0, description="Seconds from now.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    _tenant = field_validator("tenant")(check_name)

    def limits(self) -> LimitSpec:
        b = self.budget
        return LimitSpec(
            self.rpm, self.tpm, self.concurrency, None if b is None else Budget(b.amount, b.unit, b.window)
        )

    def expiry(self) -> float | None:
        if self.expires_in is not None:
            return time.time() + self.expires_in
        return self.expires_at
