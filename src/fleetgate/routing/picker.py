"""The picker: filters, then weighted scorers each giving [0, 1] per endpoint, then the best with a random
tie-break. A scorer is one method that ranks endpoints; retries and failover belong to the relay."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetgate.fleet.state import Endpoint


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a scorer may look at: the request as parsed once by the gateway."""

    model: str
    prompt_tokens_estimate: int = 0


class Scorer(Protocol):
    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]: ...


class LoadScorer:
    """Least loaded first, from vLLM's own metrics when fresh, and always from the gateway's in-flight count.

    A queued request costs more than a running one (it waits for all of them), and a KV cache near full means
    preemption soon; requests this gateway has in flight but vLLM has not reported yet are counted too.
    """

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        now = time.monotonic()
        out = []
        for e in endpoints:
            load = e.fresh_load(now, self.stale_after)
            pressure = float(e.in_flight)
            if load is not None:
                # vLLM's counts already include what we sent, so take the larger view, not the sum.
                pressure = max(pressure, load.running + 4.0 * load.waiting)
                pressure += 8.0 * max(0.0, load.kv_usage - 0.8) / 0.2
            out.append(1.0 / (1.0 + pressure / max(e.weight, 1e-9)))
        return out


SCORERS: Mapping[str, type] = {"load": LoadScorer}


class Picker:
    def __init__(self, scorers: Sequence[tuple[Scorer, float]], rng: random.Random | None = None) -> None:
        self.scorers = list(scorers)
        self.rng = rng or random.Random()

    def pick(
        self, request: RouteRequest, candidates: Sequence[Endpoint], exclude: frozenset[str] = frozenset()
    ) -> Endpoint | None:
        """The best routable endpoint that serves the model and was not tried yet; None if there is none."""
        pool = [
            e
            for e in candidates
            if e.routable() and e.name not in exclude and (not e.models or request.model in e.models)
        ]
        if not pool:
            return None
        if len(pool) == 1:
            return pool[0]
        totals = [0.0] * len(pool)
        for scorer, weight in self.scorers:
            for i, s in enumerate(scorer.score(request, pool)):
                totals[i] += weight * s
        best = max(totals)
        ties = [e for e, t in zip(pool, totals, strict=True) if t >= best - 1e-12]
        return ties[0] if len(ties) == 1 else self.rng.choice(ties)
