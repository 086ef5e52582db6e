"""How a pool picks an endpoint: scorers and their weights, saturation, sessions, prefix keys."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from fleetgate.config.fields import STRICT, seconds
from fleetgate.config.problems import Loc, invalid
from fleetgate.routing.scorers import SCORERS as REGISTRY


def default_scorers() -> dict[str, float]:
    """Every registered scorer on by default, at the weight it declares (those declaring 0, like `ring`, are
    off unless listed): routing/scorers.py is the one list of names."""
    return {name: s.default_weight for name, s in REGISTRY.items() if s.default_weight > 0}


# The default weights, by name (read-only: a fleet file's `scorers` replaces the whole set).
SCORERS: dict[str, float] = default_scorers()


class RingConfig(BaseModel):
    """The `ring` scorer: replicas agree where a prefix goes without sharing state (docs/routing.md)."""

    model_config = STRICT

    prefix_blocks: int = Field(default=4, ge=1, description="Blocks deep the prefix key that is hashed.")
    load_bound: float = Field(
        default=1.25,
        ge=1.0,
        allow_inf_nan=False,
        description="An owner takes at most this times the mean in-flight count; beyond, the next one.",
    )


class SaturationConfig(BaseModel):
    """When an endpoint counts as full. Saturated endpoints are skipped while others are not; when all are,
    the pool's queue holds requests (priorities first, sheddable ones refused)."""

    model_config = STRICT

    max_waiting: float = Field(
        default=5, gt=0, allow_inf_nan=False, description="Requests waiting in vLLM's queue (ours included)."
    )
    max_kv_usage: float = Field(default=0.8, gt=0, le=1, description="vLLM's KV-cache use, 0 to 1.")
    max_imbalance: float = Field(
        default=16,
        gt=0,
        allow_inf_nan=False,
        description="Requests an endpoint's queue may be longer than the shortest one's before affinity "
        "yields and a prefix moves.",
    )


class SessionConfig(BaseModel):
    """Session affinity: a conversation goes back to the endpoint that holds its history."""

    model_config = STRICT

    header: str = Field(default="x-session-id", min_length=1, description="Header naming a session.")
    ttl: float = seconds(600.0, "Seconds a session stays bound after its last request.")

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]+", value):
            raise ValueError(f"must be an HTTP header name (got {value!r})")
        return value.lower()


class RoutingConfig(BaseModel):
    """How the picker ranks a pool's endpoints: a weighted sum of scorers. Listing scorers replaces the
    default set: a scorer not listed is off."""

    model_config = STRICT

    scorers: dict[str, float] = Field(
        default_factory=default_scorers, description="Scorer name -> weight (>= 0)."
    )
    picker: Literal["max", "weighted_random", "round_robin"] = Field(
        default="max", description="max | weighted_random | round_robin (ignores scorers)."
    )
    tokenizer: str = Field(
        default="none",
        description="How prompts become block keys: none (text) | builtin (the simulator's) | a model's "
        "directory or hub id (its own tokenizer and chat template; needs the [embedded] extra).",
    )
    block_size: int = Field(default=16, ge=1, le=1024, description="Tokens per KV block (vLLM's).")
    index_blocks: int = Field(
        default=65536, ge=1, description="Blocks remembered per endpoint until vLLM reports its capacity."
    )
    kv_events_topic: str = Field(default="", description="ZMQ topic of KV-cache events ('' = all).")
    kv_events_silence: float = seconds(10.0, "Seconds without events after a request: index cleared.")
    saturation: SaturationConfig = Field(default_factory=SaturationConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    ring: RingConfig = Field(default_factory=RingConfig)
    prefill_tokens_per_request: int = Field(
        default=2048, ge=1, description="Pending prompt tokens that weigh like one queued request."
    )
    debug_headers: bool = Field(
        default=False, description="Add x-fleetgate-endpoint/-route/-prefix-hit to responses."
    )

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"must be none, builtin, or a model directory or hub id (got {value!r})")
        return value

    @field_validator("scorers")
    @classmethod
    def _known(cls, scorers: dict[str, float]) -> dict[str, float]:
        problems: list[tuple[Loc, str]] = []
        for name, weight in scorers.items():
            if name not in REGISTRY:
                problems.append(((name,), f"unknown scorer (known: {', '.join(REGISTRY)})"))
            elif not (weight >= 0 and weight != float("inf")):
                problems.append(((name,), f"weight must be a finite number >= 0 (got {weight})"))
        if problems:
            raise invalid(*problems)
        return scorers
