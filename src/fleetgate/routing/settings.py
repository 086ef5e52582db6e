"""A pool's routing settings as plain values: built once at the edge (api/gateway.py) from the fleet file,
read by the router, picker and scorers. No pydantic below the edge; every default lives in config/."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fleetgate.routing.capacity import Saturation

__all__ = ["RoutingSettings", "Strategy"]

Strategy = Literal["max", "weighted_random", "round_robin"]


@dataclass(frozen=True)
class RoutingSettings:
    scorers: Mapping[str, float]  # scorer name (routing.scorers.SCORERS) -> weight
    strategy: Strategy
    saturation: Saturation
    block_size: int  # tokens per KV block (vLLM's)
    prefill_tokens_per_request: int  # pending prompt tokens that weigh like one queued request
    ring_prefix_blocks: int  # the ring scorer's key: the prefix this many blocks deep
    ring_load_bound: float  # the ring scorer's bound on an owner's share of in-flight requests

    @property
    def stale_after(self) -> float:
        return self.saturation.stale_after
