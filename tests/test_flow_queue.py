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


async def _rounds(fair: bool, rounds: int = 20) -> dict[str, int]:
    """Each round a noisy tenant sends 10 requests and a quiet one sends 1 (same size, same priority); the
    saturated pool serves 2. Returns how many of each were served."""
    room = Room(0)
    q = FlowQueue("p", room, max_length=100_000, max_wait=60, fair=fair)
    served: dict[str, int] = {"noisy": 0, "quiet": 0}

    async def ask(tenant: str) -> None:
        await q.admit(0, None, tenant, 100.0)
        served[tenant] += 1

    tasks = []
    for r in range(rounds):
        tasks += [asyncio.create_task(ask("noisy")) for _ in range(10)]
        tasks.append(asyncio.create_task(ask("quiet")))
        waiting = 11 + 9 * r  # 2 of each round's 11 leave
        await settle(lambda: len(q) == waiting)  # noqa: B023
        before = sum(served.values())
        room.free = 2
        q.kick()
        room.free = 0  # the two released take the room until the next round
        await settle(lambda: sum(served.values()) == before + 2)  # noqa: B023
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return served


async def test_a_tenant_sending_ten_times_the_load_leaves_the_others_their_share() -> None:
    fair = await _rounds(fair=True)
    assert fair == {"noisy": 20, "quiet": 20}  # half the pool each: the quiet tenant's whole demand
    fifo = await _rounds(fair=False)
    assert fifo["quiet"] <= 4  # first come first served: the noisy backlog starves it


async def test_fair_share_orders_by_tokens_not_requests() -> None:
    """A tenant of big requests gets as many tokens as one of small requests, not as many requests."""
    room = Room(0)
    q = FlowQueue("p", room, max_length=1000, max_wait=60, fair=True)
    order: list[str] = []

    async def ask(tenant: str, tokens: float) -> None:
        await q.admit(0, None, tenant, tokens)
        order.append(tenant)

    tasks = [asyncio.create_task(ask("big", 400.0)) for _ in range(3)]
    tasks += [asyncio.create_task(ask("small", 100.0)) for _ in range(12)]
    await settle(lambda: len(q) == 15)
    room.free = 1
    q.kick()
    for n in range(1, 16):
        await settle(functools.partial(reached, order, n))
        q.done()
    await asyncio.gather(*tasks)
    # Start tags: big 0, 400, 800; small 0, 100, ..., 1100. One big request per four small ones.
    b, s = "big", "small"
    assert order == [b, s, s, s, s, b, s, s, s, s, b, s, s, s, s]
