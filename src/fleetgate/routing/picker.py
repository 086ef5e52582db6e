"""The picker: filters, then weighted scorers each giving [0, 1] per endpoint, then a choice. A scorer is one
method that ranks endpoints; retries and failover belong to the relay, waiting to the flow queue.

Filters, in order: routable (breaker closed, awake), not tried yet for this request, serves the model, not
frozen (no sign of life for `stall_after` s), and open: its queue not `max_imbalance` requests longer than the
shortest one's, its figures not stale (`capacity.Saturation.open`). Strategies: `max` (highest weighted sum,
random among ties), `weighted_random` (chance proportional to the sum), `round_robin` (scorers ignored; the
baseline benchmarks compare against).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from typing import Protocol

from fleetgate.fleet.state import Endpoint
from fleetgate.routing.capacity import Saturation
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.settings import Strategy

__all__ = ["Choice", "Picker", "RouteRequest", "Scorer", "Strategy"]


class Scorer(Protocol):
    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]: ...


Choice = tuple[Endpoint, str]  # the endpoint and what decided it (a scorer's name, tie, only_choice, ...)


class Picker:
    def __init__(
        self,
        scorers: Sequence[tuple[str, Scorer, float]],
        strategy: Strategy,
        saturation: Saturation,
        rng: random.Random | None = None,
    ) -> None:
        self.scorers = [(name, s, w) for name, s, w in scorers if w > 0]
        self.strategy = strategy
        self.saturation = saturation
        self.rng = rng or random.Random()
        self._turn = itertools.count()

    def candidates(
        self, request: RouteRequest, endpoints: Sequence[Endpoint], exclude: frozenset[str] = frozenset()
    ) -> list[Endpoint]:
        model = request.model
        now = time.monotonic()
        stall_after = self.saturation.stall_after
        return [
            e
            for e in endpoints
            if e.routable()
            and e.name not in exclude
            and (not e.models or model in e.models)
            and not e.frozen(now, stall_after)
        ]

    def pick(
        self, request: RouteRequest, endpoints: Sequence[Endpoint], exclude: frozenset[str] = frozenset()
    ) -> Choice | None:
        """The best routable endpoint that serves the model and was not tried yet, and what decided it;
        None if there is none."""
        pool = self.candidates(request, endpoints, exclude)
        if not pool:
            return None
        if len(pool) > 1:
            pool = self.saturation.open(pool, time.monotonic())
        if self.strategy == "round_robin":
            return pool[next(self._turn) % len(pool)], "round_robin"
        if len(pool) == 1:
            return pool[0], "only_choice"
        columns = [(name, weight, scorer.score(request, pool)) for name, scorer, weight in self.scorers]
        totals = [sum(w * col[i] for _, w, col in columns) for i in range(len(pool))]
        if self.strategy == "weighted_random":
            if sum(totals) <= 0:
                return self.rng.choice(pool), "weighted_random"
            return self.rng.choices(pool, weights=totals)[0], "weighted_random"
        best = max(totals)
        ties = [i for i, t in enumerate(totals) if t >= best - 1e-12]
        won = ties[0] if len(ties) == 1 else self.rng.choice(ties)
        return pool[won], _reason(columns, totals, won) if len(ties) == 1 else "tie"


def _reason(columns: list[tuple[str, float, list[float]]], totals: list[float], won: int) -> str:
    """The scorer that put the winner ahead of the runner-up by the most."""
    runner_up = max((i for i in range(len(totals)) if i != won), key=totals.__getitem__)
    margins = {name: w * (col[won] - col[runner_up]) for name, w, col in columns}
    name, margin = max(margins.items(), key=lambda kv: kv[1])
    return name if margin > 0 else "tie"
