"""The flow queue: pass-through with room, priority order when saturated, shedding, bounds."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest

from fleetgate.admission.flow import FlowQueue
from fleetgate.protocol import RateLimitError, ServiceUnavailableError


async def settle(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds (a bounded number of loop turns, no wall-clock wait)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def reached(items: list[str], n: int) -> bool:
    return len(items) >= n


class Room:
    """A pool's room, set by the test."""

    def __init__(self, free: float) -> None:
        self.free = free

    def __call__(self) -> float:
        return self.free


async def test_with_room_requests_pass_straight_through() -> None:
    q = FlowQueue("p", Room(3), max_length=10, max_wait=5)
    assert await q.admit(0) == 0.0
    assert await q.admit(-1) == 0.0  # even sheddable traffic, while there is room
    assert len(q) == 0


async def test_when_saturated_higher_priorities_go_first_fifo_within_one() -> None:
    room = Room(0)
    q = FlowQueue("p", room, max_length=10, max_wait=5)
    order: list[str] = []

    async def ask(name: str, priority: int) -> None:
        await q.admit(priority)
        order.append(name)

    tasks = [asyncio.create_task(ask(n, p)) for n, p in [("low1", 0), ("high", 10), ("low2", 0), ("mid", 5)]]
    await settle(lambda: len(q) == 4)
    room.free = 1
    q.kick()  # one at a time: each released request takes the room until it finishes
    for n, expected in enumerate(["high", "mid", "low1", "low2"], 1):
        await settle(functools.partial(reached, order, n))
        assert order[-1] == expected and len(order) == n
        q.done()
    await asyncio.gather(*tasks)


async def test_sheddable_and_overflow_get_429_with_a_retry_after_that_grows() -> None:
    q = FlowQueue("p", Room(0), max_length=2, max_wait=5)
    with pytest.raises(RateLimitError) as shed:
        await q.admit(-1)
    first = shed.value.retry_after
    waiting = [asyncio.create_task(q.admit(0)) for _ in range(2)]
    await settle(lambda: len(q) == 2)
    with pytest.raises(RateLimitError) as full:
        await q.admit(0)
    assert "queue is full" in full.value.message
    assert first == 1 and full.value.retry_after == 1  # 3 ahead at the assumed 10 requests/s
    for _ in range(3):  # three finish at once, then a long pause: the pace is slow
        q._finished.append(0.0)
    slow = q.retry_after()
    assert slow > 1
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert len(q) == 0 and q.shed == 2


async def test_waiting_too_long_is_503_and_a_cancelled_waiter_leaves_the_queue() -> None:
    q = FlowQueue("p", Room(0), max_length=5, max_wait=0.05)
    with pytest.raises(ServiceUnavailableError) as late:
        await q.admit(0)
    assert late.value.retry_after is not None and q.timed_out == 1 and len(q) == 0
    q.max_wait = 60
    gone = asyncio.create_task(q.admit(0))
    await settle(lambda: len(q) == 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert len(q) == 0


async def test_a_released_waiter_that_is_cancelled_gives_its_room_back() -> None:
    room = Room(0)
    q = FlowQueue("p", room, max_length=5, max_wait=60)
    t = asyncio.create_task(q.admit(0))
    await settle(lambda: len(q) == 1)
    room.free = 1
    q.kick()
    assert not q.has_room()  # its room is taken while it wakes up
    t.cancel()
    await asyncio.gather(t, return_exceptions=True)
    assert q.has_room()
