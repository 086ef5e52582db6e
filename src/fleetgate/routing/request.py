"""What routing knows of one request: parsed once by the gateway, read by every scorer."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = ["RouteRequest"]


@dataclass(slots=True)
class RouteRequest:
    model: str  # the name sent upstream (an alias already resolved)
    adapter: str | None = None  # the LoRA adapter asked for, when `model` is one
    keys: Sequence[int] = ()  # the prompt's block keys (fleet.prefix_keys)
    tokens: int = 0  # prompt length in tokens (estimated)
    session: Hashable | None = None  # a conversation's identity, from a header or its history
