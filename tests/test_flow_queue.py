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


class Rooms:
    """Room per endpoint, set by the test; the pool's room is their sum."""

    def __init__(self, **free: float) -> None:
        self.free = free

    def pool(self) -> float:
        return sum(self.free.values())

    def at(self, endpoint: str) -> float:
        return self.free.get(endpoint, 0.0)


def homed(rooms: Rooms, lookahead: int, max_length: int = 100) -> FlowQueue:
    return FlowQueue(
        "p", rooms.pool, max_length=max_length, max_wait=60, room_at=rooms.at, lookahead=lookahead
    )


async def queue_up(
    q: FlowQueue, order: list[str], *waiters: tuple[str, str | None, int]
) -> list[asyncio.Task[None]]:
    """Waiters (name, home endpoint or None, priority) join in this order; returns their tasks."""

    async def ask(name: str, home: str | None, priority: int) -> None:
        await q.admit(priority, home=lambda: None if home is None else [home])
        order.append(name)

    tasks = []
    for n, (name, home, priority) in enumerate(waiters, len(q) + 1):
        tasks.append(asyncio.create_task(ask(name, home, priority)))
        await settle(lambda: len(q) == n)  # noqa: B023
    return tasks


async def test_room_at_an_endpoint_goes_to_the_first_request_whose_prefix_lives_there() -> None:
    rooms = Rooms(a=0, b=0)
    q = homed(rooms, lookahead=8)
    order: list[str] = []
    tasks = await queue_up(q, order, ("for-a", "a", 0), ("for-b", "b", 0), ("for-b-too", "b", 0))
    rooms.free["b"] = 1
    q.kick()
    await settle(lambda: len(order) == 1)
    assert order == ["for-b"] and len(q) == 2  # not the head: its home has no room
    rooms.free["b"] = 0
    rooms.free["a"] = 1
    q.done()
    await settle(lambda: len(order) == 2)
    assert order == ["for-b", "for-a"]
    rooms.free["a"] = 0
    rooms.free["b"] = 1
    q.done()
    await asyncio.gather(*tasks)
    assert order == ["for-b", "for-a", "for-b-too"]


async def test_strict_order_without_lookahead_and_the_head_when_nobody_wants_the_room() -> None:
    for lookahead, first in [(0, "for-a"), (8, "for-c")]:
        rooms = Rooms(a=0, b=0, c=0)
        q = homed(rooms, lookahead)
        order: list[str] = []
        tasks = await queue_up(q, order, ("for-a", "a", 0), ("for-c", "c", 0))
        rooms.free["c"] = 1
        q.kick()
        await settle(lambda: len(order) == 1)  # noqa: B023
        assert order == [first]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Room at an endpoint nobody waiting calls home still goes to the head: no room idles while one waits.
    rooms = Rooms(a=0, b=0, c=0)
    q = homed(rooms, lookahead=8)
    order = []
    tasks = await queue_up(q, order, ("for-a", "a", 0), ("for-b", "b", 0))
    rooms.free["c"] = 1
    q.kick()
    await settle(lambda: len(order) == 1)
    assert order == ["for-a"]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_request_without_a_home_takes_any_room_and_priorities_are_never_skipped() -> None:
    rooms = Rooms(a=0, b=0)
    q = homed(rooms, lookahead=8)
    order: list[str] = []
    tasks = await queue_up(
        q, order, ("urgent-for-a", "a", 5), ("for-a", "a", 0), ("cold", None, 0), ("low-for-b", "b", 0)
    )
    rooms.free["b"] = 1
    q.kick()
    await settle(lambda: len(order) == 1)
    # The urgent head's home is full, but the only requests that would take b's room are of a lower priority.
    assert order == ["urgent-for-a"]
    q.done()
    await settle(lambda: len(order) == 2)
    assert order == ["urgent-for-a", "cold"]  # no home: any room is its home; it joined before low-for-b
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_head_passed_over_lookahead_times_goes_at_the_next_room() -> None:
    rooms = Rooms(a=0, b=0)
    q = homed(rooms, lookahead=3)
    order: list[str] = []
    tasks = await queue_up(q, order, ("stuck-for-a", "a", 0))
    for n in range(1, 5):  # requests for b arrive one by one, each finding one room at b
        tasks += await queue_up(q, order, (f"b{n}", "b", 0))
        rooms.free["b"] = 1
        q.kick()
        await settle(lambda: len(order) == n)  # noqa: B023
        rooms.free["b"] = 0
        q.done()
    # Passed over three times, it took b's fourth room, its home or not; b4 still waits.
    assert order == ["b1", "b2", "b3", "stuck-for-a"] and len(q) == 1
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_room_claimed_at_an_endpoint_is_not_given_twice_before_its_request_is_sent() -> None:
    rooms = Rooms(a=0, b=0)
    q = homed(rooms, lookahead=8)
    order: list[str] = []
    tasks = await queue_up(q, order, ("b1", "b", 0), ("b2", "b", 0), ("a1", "a", 0))
    rooms.free["b"] = 1
    rooms.free["a"] = 1
    q.kick()  # two rooms, one at each: b1 takes b's, and b2 must not take it again: a's goes to a1
    await settle(lambda: len(order) == 2)
    assert sorted(order) == ["a1", "b1"] and len(q) == 1
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
