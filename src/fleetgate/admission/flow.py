"""The flow queue: one per pool, where a request waits when the pool cannot take it now.

While the pool has room (`capacity()` > 0: some endpoint is below its saturation point) requests pass
straight through and nothing is allocated. Once it is saturated, requests wait in priority order (higher
first) and are released one by one as room appears (`kick()`,
called when a request finishes and after each metrics scrape). Sheddable requests (priority < 0) are refused
with 429 instead of waiting, and so is anything beyond the queue's length; the Retry-After they get grows
with the queue's depth. A request that waits longer than `max_wait` gets 503.

Within a priority, tenants share the pool by tokens (`fair=True`): start-time fair queuing, a virtual token
clock per tenant. A waiting request's tag is max(the queue's virtual time, the tenant's previous request's
finish tag) and its finish tag adds its estimated tokens; the smallest tag goes first and the virtual time
moves to each released request's tag. A tenant sending ten times the load queues behind itself, while the
others' requests carry the current virtual time and are served in turn: each backlogged tenant gets an
equal share of tokens, whatever its rate. Without `fair`, first come first served within a priority. Tags
start over whenever the queue empties, so the table never outgrows the tenants waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetgate.protocol import RateLimitError, ServiceUnavailableError

__all__ = ["FlowQueue"]


@dataclass(order=True)
class _Waiter:
    rank: int  # -priority: heapq pops the smallest
    tag: float  # virtual start time (fair share); 0 without it
    seq: int
    future: asyncio.Future[None] = field(compare=False)
    since: float = field(compare=False, default=0.0)  # loop time it began waiting


class FlowQueue:
    def __init__(
        self,
        pool: str,
        capacity: Callable[[], float],
        max_length: int,
        max_wait: float,
        on_wait: Callable[[], None] = lambda: None,
        fair: bool = False,
    ) -> None:
        self.pool = pool
        self.fair = fair
        self._virtual = 0.0  # the tag of the last request released
        self._finish: dict[str, float] = {}  # tenant -> finish tag of its last queued request
        self.on_wait = on_wait  # a request began waiting: the autoscaler's cue when workers are cold
        self.capacity = capacity  # requests the pool can take now without them queueing at an endpoint
        self.max_length = max_length
        self.max_wait = max_wait
        self._finished: deque[float] = deque(maxlen=256)  # when recent requests finished, for Retry-After
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._released = 0  # let go by kick() but not yet sent: room they will take
        self.shed = 0
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._heap)

    def drain_rate(self) -> float:
        """Requests per second the pool finished lately (10 until there is something to go on)."""
        if len(self._finished) < 2:
            return 10.0
        span = time.monotonic() - self._finished[0]
        return len(self._finished) / max(span, 1e-3)

    def done(self) -> None:
        """A request of this pool finished: its room is free."""
        self._finished.append(time.monotonic())
        self.kick()

    def retry_after(self) -> int:
        """Seconds until the queue ahead would have drained at the pool's recent pace (1 to 60)."""
        return max(1, min(60, math.ceil((len(self._heap) + 1) / max(self.drain_rate(), 0.1))))

    def oldest_wait(self) -> float:
        """Seconds the longest-waiting request has waited (0 when none)."""
        if not self._heap:
            return 0.0
        return asyncio.get_running_loop().time() - min(w.since for w in self._heap)

    def has_room(self) -> bool:
        return self.capacity() - self._released >= 1

    async def admit(
        self, priority: int, max_wait: float | None = None, tenant: str = "", tokens: float = 1.0
    ) -> float:
        """Return when the request may go upstream (after how many seconds of waiting), or raise. A request
        held for a cold start waits `max_wait` instead of the queue's own bound. `tenant` and `tokens` (its
        estimated size) give it its turn among its priority's tenants."""
        if not self._heap and self.has_room():
            return 0.0
        if priority < 0:
            self.shed += 1
            raise RateLimitError(
                f"pool '{self.pool}' is saturated and this request's priority is sheddable",
                retry_after=self.retry_after(),
            )
        if len(self._heap) >= self.max_length:
            self.shed += 1
            raise RateLimitError(
                f"pool '{self.pool}' is saturated and its queue is full ({self.max_length})",
                retry_after=self.retry_after(),
            )
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter = _Waiter(-priority, self._tag(tenant, tokens), next(self._seq), loop.create_future(), started)
        heapq.heappush(self._heap, waiter)
        self.kick()
        if not waiter.future.done():
            self.on_wait()
        try:
            async with asyncio.timeout(self.max_wait if max_wait is None else max_wait):
                await asyncio.shield(waiter.future)
        except TimeoutError:
            self.timed_out += 1
            raise ServiceUnavailableError(
                f"pool '{self.pool}' stayed saturated for {self.max_wait:g} s", retry_after=self.retry_after()
            ) from None
        finally:
            if waiter.future.done() and not waiter.future.cancelled():
                self._released -= 1
            else:
                waiter.future.cancel()
                self._remove(waiter)
        return loop.time() - started

    def _tag(self, tenant: str, tokens: float) -> float:
        if not self.fair:
            return 0.0
        if not self._heap:  # nobody waits: every tenant starts level
            self._finish.clear()
            self._virtual = 0.0
        start = max(self._virtual, self._finish.get(tenant, 0.0))
        self._finish[tenant] = start + max(tokens, 1.0)
        return start

    def kick(self) -> None:
        """Release waiters, best first, while there is room."""
        while self._heap and self.has_room():
            waiter = heapq.heappop(self._heap)
            if waiter.future.done():
                continue
            waiter.future.set_result(None)
            self._virtual = max(self._virtual, waiter.tag)
            self._released += 1

    def _remove(self, waiter: _Waiter) -> None:
        try:
            self._heap.remove(waiter)
        except ValueError:
            return
        heapq.heapify(self._heap)
