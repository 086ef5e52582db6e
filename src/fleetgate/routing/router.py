"""A pool's router: the picker, plus what routing must remember once it has chosen.

After each pick: the prompt's blocks go into the approximate index at the chosen endpoint, the session is
bound to it, and the prompt tokens it does not hold count as pending prefill there until the first byte
comes back (`prefill_done`). The relay calls `pick` once per attempt and `prefill_done` once per attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fleetgate.config import RoutingConfig
from fleetgate.fleet.state import Endpoint, PoolState
from fleetgate.routing.picker import Picker, Saturation, Scorer
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.scorers import SCORERS, ScorerSettings

__all__ = ["PoolRouter"]


class PoolRouter:
    def __init__(
        self,
        state: PoolState,
        config: RoutingConfig,
        stale_after: float,
        stall_after: float,
        on_decision: Callable[[str, str], None] = lambda pool, reason: None,
        *,
        precise: bool = False,  # endpoints will publish KV events (discovered ones, not listed yet)
    ) -> None:
        self.state = state
        self.config = config
        self.block_size = config.block_size
        settings = ScorerSettings(
            stale_after=stale_after,
            precise=precise or any(e.kv_events for e in state.endpoints),
            prefill_tokens_per_request=config.prefill_tokens_per_request,
            ring_prefix_blocks=config.ring.prefix_blocks,
            ring_load_bound=config.ring.load_bound,
        )
        scorers: list[tuple[str, Scorer, float]] = [
            (name, SCORERS[name](state, settings), weight) for name, weight in config.scorers.items()
        ]
        if not any(w > 0 for _, _, w in scorers):
            scorers = [("load", SCORERS["load"](state, settings), 1.0)]
        sat = config.saturation
        self.saturation = Saturation(sat.max_waiting, sat.max_kv_usage, stale_after, stall_after)
        self.picker = Picker(scorers, config.picker, self.saturation)
        self.on_decision = on_decision

    def pick(
        self, request: RouteRequest, endpoints: Sequence[Endpoint], exclude: frozenset[str] = frozenset()
    ) -> Endpoint | None:
        endpoint = self.picker.pick(request, endpoints, exclude)
        if endpoint is None:
            return None
        self.on_decision(self.state.name, request.reason)
        now = time.monotonic()
        if request.keys:
            self.state.approx.record(endpoint.name, request.keys)
            hit_tokens = request.hits.get(endpoint.name, 0) * self.block_size
            request.pending = max(0, request.tokens - hit_tokens)
            endpoint.pending_prefill += request.pending
        if request.session is not None:
            self.state.sessions.bind(request.session, endpoint.name, now)
        if endpoint.kv_live and not endpoint.awaiting_events_since:
            endpoint.awaiting_events_since = now
        return endpoint

    def prefill_done(self, request: RouteRequest, endpoint: Endpoint) -> None:
        if request.pending:
            endpoint.pending_prefill = max(0, endpoint.pending_prefill - request.pending)
            request.pending = 0

    def hit_ratio(self, request: RouteRequest, endpoint: Endpoint) -> float:
        """The share of the prompt's blocks the endpoint was predicted to hold (debug header)."""
        return request.hits.get(endpoint.name, 0) / len(request.keys) if request.keys else 0.0

    def track_capacity(self, endpoint: Endpoint) -> None:
        """Size the endpoint's approximate index like its KV cache, once vLLM reports it."""
        if endpoint.load is not None and endpoint.load.num_gpu_blocks:
            self.state.approx.set_capacity(endpoint.name, endpoint.load.num_gpu_blocks)
