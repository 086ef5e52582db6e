"""The built-in scorers and their registry, the one list of scorer names (the fleet file is validated
against it). Each scorer gives every candidate endpoint a score in [0, 1]; the picker weighs and sums.

A scorer reads fleet state only (no I/O, no awaiting): what the background loops last wrote. It declares
what it needs of a request (`needs`), so the gateway hashes prompts only for pools whose scorers read them,
and the weight it has when the fleet file does not list scorers (`default_weight`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal, Protocol

from fleetgate.fleet.state import Endpoint, PoolState
from fleetgate.routing.capacity import queued
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.ring import RingScorer
from fleetgate.routing.settings import RoutingSettings

__all__ = ["SCORERS", "LoadScorer", "LoraScorer", "Need", "PrefixScorer", "ScorerType", "SessionScorer"]

# What a scorer reads of a request beyond its model: "prompt" (block keys and size: the body is hashed),
# "session" (the conversation's identity: a header or the body's history, hashed with the prompt).
Need = Literal["prompt", "session"]


class LoadScorer:
    """Least loaded first: vLLM's queue, running batch and KV-cache use when fresh; always the gateway's own
    in-flight count and the prompt tokens it sent that still wait for prefill (vLLM's metrics lag them).

    A queued request costs more than a running one (it waits for all of them), and a KV cache past the
    operator's `saturation.max_kv_usage` means preemption soon.
    """

    needs: ClassVar[frozenset[Need]] = frozenset()
    default_weight: ClassVar[float] = 1.0

    def __init__(self, pool: PoolState, settings: RoutingSettings) -> None:
        self.stale_after = settings.stale_after
        self.per_request = settings.prefill_tokens_per_request
        self.max_kv = settings.saturation.max_kv_usage

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        now = time.monotonic()
        per_request = self.per_request
        max_kv = self.max_kv
        kv_span = max(1.0 - max_kv, 1e-9)
        out = []
        for e in endpoints:
            load = e.fresh_load(now, self.stale_after)
            pressure = float(e.in_flight)
            if load is not None:
                # vLLM's counts already include what we sent, so take the larger view, not the sum.
                pressure = max(pressure, load.running + 4.0 * queued(e, load))
                pressure += 8.0 * max(0.0, load.kv_usage - max_kv) / kv_span
            pressure += e.pending_prefill / per_request
            out.append(1.0 / (1.0 + pressure / max(e.weight, 1e-9)))
        return out


class PrefixScorer:
    """The share of the prompt's blocks an endpoint already holds: from its KV-cache events when they flow
    (precise), otherwise from what this gateway routed there (approximate)."""

    needs: ClassVar[frozenset[Need]] = frozenset({"prompt"})
    default_weight: ClassVar[float] = 2.0

    def __init__(self, pool: PoolState, settings: RoutingSettings) -> None:
        self.pool = pool

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        keys = request.keys
        if not keys:
            return [0.0] * len(endpoints)
        n = len(keys)
        return [h / n for h in self.pool.cached(keys, endpoints)]


class LoraScorer:
    """For an adapter: already running it > has it loaded > has a free adapter slot > must swap one out.
    Base-model requests score every endpoint alike."""

    needs: ClassVar[frozenset[Need]] = frozenset()
    default_weight: ClassVar[float] = 1.0

    def __init__(self, pool: PoolState, settings: RoutingSettings) -> None:
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

    needs: ClassVar[frozenset[Need]] = frozenset({"session"})
    default_weight: ClassVar[float] = 1.0

    def __init__(self, pool: PoolState, settings: RoutingSettings) -> None:
        self.pool = pool

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        if request.session is None:
            return [0.0] * len(endpoints)
        bound = self.pool.sessions.get(request.session, time.monotonic())
        return [1.0 if e.name == bound else 0.0 for e in endpoints]


class ScorerType(Protocol):
    """A scorer class: built once per pool, declaring what it needs and its default weight."""

    needs: ClassVar[frozenset[Need]]
    default_weight: ClassVar[float]

    def __init__(self, pool: PoolState, settings: RoutingSettings) -> None: ...
    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]: ...


SCORERS: Mapping[str, type[ScorerType]] = {
    "load": LoadScorer,
    "prefix": PrefixScorer,
    "lora": LoraScorer,
    "session": SessionScorer,
    "ring": RingScorer,
}
