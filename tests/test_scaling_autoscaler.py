"""The autoscaler loop: against a provider that records what it is asked, and end to end with simulator
workers (a cold start on demand, idle scale-down with a drain, sleep and wake on demand)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from fleetgate.scaling.autoscaler import Autoscaler, PoolLoad, Stop
from fleetgate.scaling.gpus import GpuInventory, NotEnoughGpus
from fleetgate.scaling.local import LocalProvider
from fleetgate.scaling.spec import PoolSpec, RuleKind, ScalingRule
from fleetgate.scaling.worker import Worker, WorkerState
from tests.conftest import alive
from tests.test_scaling_local import FAST, sim_pool, state, until
from tests.test_scaling_policy import pool_spec, worker_spec


class RecordingProvider:
    """Workers that exist only as records; stops and sleeps wait until the test lets them finish."""

    def __init__(self, fail: str | None = None, gpus: int = 8) -> None:
        self.workers: dict[str, Worker] = {}
        self.calls: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.fail = fail
        self.gpus = gpus

    async def start(self, spec: PoolSpec) -> Worker:
        if len(self.workers) >= self.gpus:
            raise NotEnoughGpus("none free")
        w = Worker(
            id=f"w{len(self.workers)}",
            spec=spec,
            log_path=Path("/dev/null"),
            gpus=(),
            state=WorkerState.READY,
        )
        self.workers[w.id] = w
        self.calls.append(("start", w.id))
        return w

    async def stop(self, worker_id: str, in_flight: Callable[[], int] | None = None) -> None:
        self.calls.append(("stop", worker_id))
        await self.release.wait()
        del self.workers[worker_id]

    def list(self, pool: str | None = None) -> list[Worker]:
        return list(self.workers.values())

    async def sleep(self, worker_id: str, in_flight: Callable[[], int] | None = None) -> None:
        self.calls.append(("sleep", worker_id))

    async def wake(self, worker_id: str) -> float | None:
        self.calls.append(("wake", worker_id))
        return 0.0

    def failure(self, pool: str) -> str | None:
        return self.fail


def fixed(queued: int = 0, in_flight: dict[str, int] | None = None) -> Callable[[str], PoolLoad]:
    return lambda pool: PoolLoad(queued=queued, oldest_wait=0.0, in_flight=in_flight or {})


async def test_an_action_under_way_is_not_asked_for_twice() -> None:
    provider = RecordingProvider()
    clock = [0.0]
    spec = pool_spec(stabilization_window=0.0, idle_timeout=0.0)
    scaler = Autoscaler(provider, [spec], fixed(queued=8), interval=1.0, clock=lambda: clock[0])
    await scaler.tick()
    assert provider.calls == [("start", "w0"), ("start", "w1")]
    scaler.observe = fixed()  # the load is gone
    clock[0] = 1.0
    decisions = await scaler.tick()
    assert decisions["p"].actions == (Stop("w0"), Stop("w1"))
    assert scaler.desired["p"] == 0
    await until(lambda: len(provider.calls) == 4, "both stops begun")
    clock[0] = 2.0
    assert (await scaler.tick())["p"].actions == ()  # both are seen as draining already
    provider.release.set()
    await scaler.close()
    assert provider.workers == {}


async def test_failed_pools_and_refused_starts_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    failed = RecordingProvider(fail="worker p-1 failed 3 times in a row")
    assert await Autoscaler(failed, [pool_spec()], fixed(queued=4), interval=1.0).tick() == {}
    assert failed.calls == []
    full = RecordingProvider(gpus=1)
    await Autoscaler(full, [pool_spec()], fixed(queued=8), interval=1.0).tick()
    assert full.calls == [("start", "w0")]
    assert "cannot start a worker: none free" in caplog.text


@contextlib.asynccontextmanager
async def running(scaler: Autoscaler) -> AsyncIterator[None]:
    task = asyncio.create_task(scaler.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await scaler.close()


class Queue:
    """Stands in for the gateway's flow queue of one pool."""

    def __init__(self) -> None:
        self.queued = 0
        self.since = 0.0
        self.in_flight: dict[str, int] = {}
        self.last_read = 0.0  # when the autoscaler last looked

    def load(self, pool: str) -> PoolLoad:
        self.last_read = time.monotonic()
        wait = time.monotonic() - self.since if self.queued else 0.0
        return PoolLoad(queued=self.queued, oldest_wait=wait, in_flight=dict(self.in_flight))

    def hold(self) -> None:
        self.queued, self.since = 1, time.monotonic()

    def send_to(self, w: Worker) -> None:
        self.queued = 0
        self.in_flight[w.id] = 1


def scaling_pool(**changes: object) -> PoolSpec:
    """Scale to zero after half a second idle; one worker per request."""
    rule = ScalingRule(RuleKind.REQUEST_COUNT, 1)
    return sim_pool(
        **{"max_workers": 2, "idle_timeout": 0.5, "stabilization_window": 0.2, "rule": rule, **changes}
    )


async def test_cold_start_on_demand_then_idle_scale_down_with_drain(tmp_path: Path) -> None:
    queue = Queue()
    async with LocalProvider(tmp_path, GpuInventory([])) as provider:
        scaler = Autoscaler(provider, [scaling_pool()], queue.load, interval=0.05)
        async with running(scaler):
            await until(lambda: scaler.desired["p"] == 0, "the first tick")
            assert provider.list() == []  # scale to zero: nothing runs while nothing is asked
            queue.hold()
            scaler.nudge()
            await until(lambda: len(provider.list()) == 1, "a worker started for the held request")
            (w,) = provider.list()
            await until(lambda: state(w) is WorkerState.READY, "the worker ready")
            queue.send_to(w)
            pid = w.pid
            assert pid is not None
            # The stream is still open past the idle timeout and the window: the worker stays.
            past = time.monotonic() + 0.8
            await until(lambda: queue.last_read > past, "the autoscaler to look past the idle timeout")
            assert state(w) is WorkerState.READY
            queue.in_flight.clear()
            ended = time.monotonic()
            await until(lambda: provider.list() == [], "idle scale-down")
            # The last tick that saw the stream may have come up to one interval before it ended.
            assert time.monotonic() - ended >= 0.5 - 0.05
            assert state(w) is WorkerState.STOPPED and not alive(pid)
            assert scaler.desired["p"] == 0


async def test_sleeps_when_idle_and_wakes_on_demand(tmp_path: Path) -> None:
    queue = Queue()
    spec = scaling_pool(worker=worker_spec(engine_args=FAST, sleep=True))
    async with LocalProvider(tmp_path, GpuInventory([])) as provider:
        scaler = Autoscaler(provider, [spec], queue.load, interval=0.05)
        async with running(scaler):
            queue.hold()
            await until(lambda: len(provider.list()) == 1, "a cold start")
            (w,) = provider.list()
            await until(lambda: state(w) is WorkerState.READY, "ready")
            queue.send_to(w)
            queue.in_flight.clear()
            await until(lambda: state(w) is WorkerState.SLEEPING, "asleep after the idle timeout")
            pid = w.pid
            queue.hold()
            scaler.nudge()
            await until(lambda: state(w) is WorkerState.READY, "awake again")
            assert (w.pid, w.wakes) == (pid, 1)  # the same process woken, not a cold start
            assert w.last_wake_seconds is not None
