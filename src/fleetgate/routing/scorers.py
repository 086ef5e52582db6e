"""The built-in scorers. Each gives every candidate endpoint a score in [0, 1]; the picker weighs and sums.

A scorer reads fleet state only (no I/O, no awaiting): what the background loops last wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fleetgate.fleet.state import Endpoint, PoolState
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.ring import RingScorer

__all__ = ["SCORERS", "LoadScorer", "LoraScorer", "PrefixScorer", "ScorerSettings", "SessionScorer"]


@dataclass(frozen=True)
class ScorerSettings:
    stale_after: float = 1.0  # seconds after which scraped figures are not trusted
    precise: bool = False  # prefix hits from KV events where they flow
    prefill_tokens_per_request: int = 2048  # pending prefill tokens that weigh like one queued request
    ring_prefix_blocks: int = 4  # the ring scorer's key: the prefix this many blocks deep
    ring_load_bound: float = 1.25  # the ring scorer's bound on an owner's share of in-flight requests


class LoadScorer:
    """Least loaded first: vLLM's queue, running batch and KV-cache use when fresh; always the gateway's own
    in-flight count and the prompt tokens it sent that still wait for prefill (vLLM's metrics lag them).

    A queued request costs more than a running one (it waits for all of them), and a KV cache near full means
    preemption soon.
    """

    def __init__(self, pool: PoolState, settings: ScorerSettings) -> None:
        self.settings = settings

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        now = time.monotonic()
        per_request = self.settings.prefill_tokens_per_request
        out = []
        for e in endpoints:
            load = e.fresh_load(now, self.settings.stale_after)
            pressure = float(e.in_flight)
            if load is not None:
                # vLLM's counts already include what we sent, so take the larger view, not the sum.
                pressure = max(pressure, load.running + 4.0 * e.queued(load))
                pressure += 8.0 * max(0.0, load.kv_usage - 0.8) / 0.2
            pressure += e.pending_prefill / per_request
            out.append(1.0 / (1.0 + pressure / max(e.weight, 1e-9)))
        return out


class PrefixScorer:
    """The share of the prompt's blocks an endpoint already holds: from its KV-cache events when they flow
    (precise), otherwise from what this gateway routed there (approximate)."""

    def __init__(self, pool: PoolState, settings: ScorerSettings) -> None:
        self.pool = pool
        self.precise = settings.precise

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        keys = request.keys
        if not keys:
            return [0.0] * len(endpoints)
        names = [e.name for e in endpoints]
        hits = self.pool.approx.match(keys, names)
        if self.precise and any(e.kv_live for e in endpoints):
            exact = self.pool.precise.match(keys, names)
            hits = [x if e.kv_live else h for e, x, h in zip(endpoints, exact, hits, strict=True)]
        for e, h in zip(endpoints, hits, strict=True):
            request.hits[e.name] = h
        n = len(keys)
        return [h / n for h in hits]


class LoraScorer:
    """For an adapter: already running it > has it loaded > has a free adapter slot > must swap one out.
    Base-model requests score every endpoint alike."""

    def __init__(self, pool: PoolState, settings: ScorerSettings) -> None:
        self.stale_after = settings.stale_after

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        adapter = request.adapter
        if adapter is None:
            return [1.0] * len(endpoints)
        now = time.monotonic()
        out = []
        for e in endpoints:
            load = e.fresh_load(now, self.stale_after)
            if load is not None and (adapter in load.lora_running or adapter in load.lora_waiting):
                out.append(1.0)
            elif adapter in e.adapters:
                out.append(0.75)
            elif load is not None and load.max_lora is not None and len(e.adapters) < load.max_lora:
                out.append(0.5)
            else:
                out.append(0.0)
        return out


class SessionScorer:
    """The endpoint this conversation was last sent to. The picker's saturation filter runs first, so a
    saturated endpoint loses its sessions to the least loaded one instead of queueing them."""

    def __init__(self, pool: PoolState, settings: ScorerSettings) -> None:
        self.pool = pool

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        if request.session is None:
            return [0.0] * len(endpoints)
        bound = self.pool.sessions.get(request.session, time.monotonic())
        return [1.0 if e.name == bound else 0.0 for e in endpoints]


def _ring(pool: PoolState, settings: ScorerSettings) -> RingScorer:
    return RingScorer(pool, settings.ring_prefix_blocks, settings.ring_load_bound)


ScorerFactory = Callable[
    [PoolState, ScorerSettings], "LoadScorer | PrefixScorer | LoraScorer | SessionScorer | RingScorer"
]
SCORERS: Mapping[str, ScorerFactory] = {
    "load": LoadScorer,
    "prefix": PrefixScorer,
    "lora": LoraScorer,
    "session": SessionScorer,
    "ring": _ring,
}
