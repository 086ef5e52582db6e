"""Faults a simulated server can be told to show, by flags at start or through the admin endpoint."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetgate.protocol import InternalServerError, OpenAIError, RateLimitError, ServiceUnavailableError


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    error_rates: dict[int, float] = Field(default_factory=dict, description="HTTP status -> probability")
    hang_rate: float = Field(0.0, ge=0, le=1, description="probability a request never gets an answer")
    crash_rate: float = Field(0.0, ge=0, le=1, description="probability a stream kills the server mid-way")
    crash_after_tokens: int = Field(1, ge=0, description="tokens a crashing stream sends first")
    first_byte_delay: float = Field(0.0, ge=0, description="seconds before any answer starts")
    health: Literal["ok", "hang", "fail"] = "ok"

    @field_validator("error_rates")
    @classmethod
    def _rates(cls, v: dict[int, float]) -> dict[int, float]:
        for status, p in v.items():
            if not 400 <= status <= 599 or not 0 <= p <= 1:
                raise ValueError(
                    f"error rate {status}={p}: need a 4xx/5xx status and a probability in [0, 1]"
                )
        if sum(v.values()) > 1:
            raise ValueError("error rates add up to more than 1")
        return v

    def pick_error(self, rng: random.Random) -> int | None:
        roll = rng.random()
        for status, p in self.error_rates.items():
            if roll < p:
                return status
            roll -= p
        return None


def parse_error_rates(text: str) -> dict[int, float]:
    """`503=0.1,429=0.05` -> {503: 0.1, 429: 0.05}."""
    out: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        status, sep, prob = part.partition("=")
        if not sep:
            raise ValueError(f"expected STATUS=PROBABILITY, got {part!r}")
        out[int(status)] = float(prob)
    return out


def fault_error(status: int) -> OpenAIError:
    kinds: dict[int, type[OpenAIError]] = {
        429: RateLimitError,
        500: InternalServerError,
        503: ServiceUnavailableError,
    }
    return kinds.get(status, OpenAIError)("injected fault", status=status)
