"""A pool's router: picks an endpoint and hands back a lease on it.

The lease owns what the pick committed at the endpoint: one in-flight request, and the prompt tokens the
endpoint does not hold cached, counted as pending prefill until its first byte comes back. The relay holds
the lease for one attempt and releases it once, whatever happens; releasing twice does nothing. The router
also remembers the pick: the prompt's blocks go into the approximate index of the endpoint, the session is
bound to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetgate.fleet.state import Endpoint, PoolState
from fleetgate.routing.capacity import Saturation
from fleetgate.routing.picker import Picker, Scorer
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.scorers import SCORERS
from fleetgate.routing.settings import RoutingSettings

__all__ = ["Lease", "PoolRouter"]


@dataclass(eq=False, slots=True)
class Lease:
    """One attempt's hold on an endpoint."""

    endpoint: Endpoint
    reason: str  # what decided the pick: a scorer's name, tie, only_choice, round_robin, weighted_random
    cached_blocks: int  # the prompt's leading blocks the endpoint was believed to hold
    blocks: int  # the prompt's blocks
    pending: int  # prompt tokens counted as pending prefill at the endpoint until the first byte
    seq: int = 0  # the endpoint's `sent` count with this request included
    released: bool = False

    @property
    def hit_ratio(self) -> float:
        """The share of the prompt's blocks the endpoint was believed to hold (debug header)."""
        return self.cached_blocks / self.blocks if self.blocks else 0.0

    def started(self) -> None:
        """The endpoint answered (its first byte): the prefill ran, nothing of this prompt is pending."""
        if self.pending:
            self.endpoint.pending_prefill = max(0, self.endpoint.pending_prefill - self.pending)
            self.pending = 0

    def release(self) -> None:
        """The attempt is over; once only."""
        if self.released:
            return
        self.released = True
        self.started()
        e = self.endpoint
        e.in_flight -= 1
        if self.seq > e.sent_at_scrape:  # sent after the last scrape: it no longer waits there
            if e.ended_epoch != e.sent_at_scrape:
                e.ended_epoch, e.ended_since = e.sent_at_scrape, 0
            e.ended_since += 1


class PoolRouter:
    def __init__(
        self,
        state: PoolState,
        settings: RoutingSettings,
        on_decision: Callable[[str, str], None] = lambda pool, reason: None,
        *,
        precise: bool = False,  # endpoints will publish KV events (discovered ones, not listed yet)
    ) -> None:
        self.state = state
        self.settings = settings
        self.block_size = settings.block_size
        scorers: list[tuple[str, Scorer, float]] = [
            (name, SCORERS[name](state, settings), weight) for name, weight in settings.scorers.items()
        ]
        if not any(w > 0 for _, _, w in scorers):
            scorers = [("load", SCORERS["load"](state, settings), 1.0)]
        self.picker = Picker(scorers, settings.strategy, settings.saturation)
        self.on_decision = on_decision
        # Prompt tokens as the engines counted them, against our estimates for the same prompts.
        self._estimated = 0
        self._counted = 0

    @property
    def saturation(self) -> Saturation:
        return self.settings.saturation

    @property
    def needs_prompt(self) -> bool:
        """Whether requests must have their prompt hashed (keys, size, session) before they are picked."""
        if self.settings.strategy == "round_robin":
            return False
        return any(SCORERS[name].needs for name, _, _ in self.picker.scorers)

    def pick(
        self, request: RouteRequest, endpoints: Sequence[Endpoint], exclude: frozenset[str] = frozenset()
    ) -> Lease | None:
        choice = self.picker.pick(request, endpoints, exclude)
        if choice is None:
            return None
        endpoint, reason = choice
        self.on_decision(self.state.name, reason)
        now = time.monotonic()
        cached = 0
        pending = 0
        if request.keys:
            # What the endpoint holds, asked of the index itself whatever decided the pick (round robin and
            # a lone candidate consult no scorer), before this prompt is recorded there.
            cached = self.state.cached(request.keys, [endpoint])[0]
            self.state.approx.record(endpoint.name, request.keys)
            pending = max(0, request.tokens - cached * self.block_size)
            endpoint.pending_prefill += pending
        endpoint.in_flight += 1
        endpoint.sent += 1
        if request.session is not None:
            self.state.sessions.bind(request.session, endpoint.name, now)
        if endpoint.kv_live and not endpoint.awaiting_events_since:
            endpoint.awaiting_events_since = now
        return Lease(endpoint, reason, cached, len(request.keys), pending, endpoint.sent)

    def observed(self, request: RouteRequest, usage: Mapping[str, Any] | None) -> None:
        """An answered prompt's size as the engine counted it (its `usage`), against our estimate."""
        counted = usage.get("prompt_tokens") if usage else None
        if not request.keys or not request.tokens or not isinstance(counted, int) or counted <= 0:
            return
        self._estimated += request.tokens
        self._counted += counted
        if self._counted > 1 << 30:  # keep it a recent average
            self._estimated //= 2
            self._counted //= 2

    @property
    def tokens_per_estimated(self) -> float:
        """Engine tokens per estimated token: 1 when prompts are hashed as the engine's tokens; for text keys
        (`tokenizer: none`, 64-byte blocks) how densely the model's tokenizer packs the text."""
        if self._counted < 4096:
            return 1.0
        return min(4.0, max(0.25, self._counted / self._estimated))

    def track_capacity(self, endpoint: Endpoint) -> None:
        """Size the endpoint's approximate index like its KV cache, once vLLM reports it: in our keys, which
        hold `block_size` estimated tokens each, so as many keys as the cache holds engine blocks only when
        the estimate is right. With a denser tokenizer the cache holds fewer of our keys, and an index sized
        in engine blocks would believe prompts are cached that were long evicted."""
        if endpoint.load is not None and endpoint.load.num_gpu_blocks:
            keys = int(endpoint.load.num_gpu_blocks / self.tokens_per_estimated)
            self.state.approx.set_capacity(endpoint.name, keys)
