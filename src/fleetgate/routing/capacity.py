"""The one saturation rule: when an endpoint counts as full, and how many more requests it takes before it is.

The picker skips saturated endpoints, the flow queue holds requests while every endpoint is saturated, the
admin view shows the verdict and the pools of started workers add their concurrency cap on top; all of them
ask here, so they cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fleetgate.fleet.state import Endpoint
from fleetgate.fleet.vllm_metrics import VLLMLoad

__all__ = ["Saturation", "queued", "stream_room"]


def queued(e: Endpoint, load: VLLMLoad) -> float:
    """vLLM's queue as `load` read it, plus the requests we sent since that are still running: vLLM has not
    reported those yet. Counted by assignments since the scrape, not by in-flight counts (requests older than
    the scrape that ended must not hide new ones, or every pick until the next scrape lands on the same
    endpoint), less those of them already over (a finished request must not repel the next one)."""
    ended = e.ended_since if e.ended_epoch == e.sent_at_scrape else 0
    return load.waiting + max(0, e.sent - e.sent_at_scrape - ended)


def stream_room(e: Endpoint) -> float:
    """Streams the endpoint may still take under the `concurrency` rule's cap (inf without a cap)."""
    return math.inf if e.max_streams is None else float(max(0, e.max_streams - e.in_flight))


@dataclass(frozen=True)
class Saturation:
    """When an endpoint counts as full: more work sent there would only wait in its queue (or preempt)."""

    max_waiting: float  # requests waiting in vLLM's queue, ours since the scrape included
    max_kv_usage: float  # vLLM's KV-cache use, 0 to 1
    stale_after: float  # seconds after which scraped figures are not trusted
    stall_after: float  # seconds without any sign of life after which an endpoint counts as frozen
    max_imbalance: float  # requests a queue may be longer than the shortest one's before affinity yields

    def room(self, e: Endpoint, now: float) -> float:
        """How many more requests `e` takes before it is saturated: 0 when it is, inf when its figures
        cannot judge it (a hosted endpoint without /metrics). Figures that stopped coming count as full: a
        frozen process keeps its last ones, and they must not make it look idle."""
        load = e.fresh_load(now, self.stale_after)
        if load is None:
            return 0.0 if e.stale(now, self.stale_after) else math.inf
        if load.kv_usage >= self.max_kv_usage:
            return 0.0
        return max(0.0, self.max_waiting - queued(e, load))

    def of(self, e: Endpoint, now: float) -> bool:
        """Whether `e` is saturated now."""
        return self.room(e, now) <= 0.0

    def backlog(self, e: Endpoint, now: float) -> float:
        """Requests queued at `e`: vLLM's queue plus ours since the scrape; inf when its figures stopped
        coming (a frozen process must not look idle), 0 when it has none to judge by."""
        load = e.fresh_load(now, self.stale_after)
        if load is None:
            return math.inf if e.stale(now, self.stale_after) else 0.0
        return queued(e, load)

    def open(self, endpoints: Sequence[Endpoint], now: float) -> list[Endpoint]:
        """The endpoints affinity may still choose: those whose queue is not `max_imbalance` requests longer
        than the shortest one's. Affinity yields to load only past that imbalance, not at an absolute
        level: when every queue is long, moving a request only trades its prefix-cache hit for a full
        prefill elsewhere (and evicts what that cache held for others), which makes every queue longer.
        The imbalance is its own setting, larger than the flow queue's gate (`max_waiting`): a prefix that
        moves costs more than a request that waits a little, so it takes a wider gap to move it.
        KV-cache use is not a reason to move either: with prefix caching a busy cache is always nearly
        full, and vLLM queues (which this counts) when it truly has no room. If every endpoint's figures
        are stale, all are open."""
        queues = [self.backlog(e, now) for e in endpoints]
        shortest = min(queues)
        if shortest == math.inf:
            return list(endpoints)
        limit = shortest + self.max_imbalance
        return [e for e, q in zip(endpoints, queues, strict=True) if q < limit]
