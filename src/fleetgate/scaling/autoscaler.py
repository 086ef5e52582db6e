"""How many workers a pool wants, and the loop that makes its provider match.

`ScalingPolicy` is arithmetic over observations and its own short memory (no I/O, no clock of its own), so
every decision can be replayed in a test. `Autoscaler` ticks one policy per pool, takes the load from a
callable (the gateway's flow queue) and the workers from a provider, and applies what the policy decided.

The count a pool wants (its *desired* count) is:
  raw      = the rule's count from the load now
  desired  = clamp(max(raw over the stabilization window), min_workers, max_workers),
             and at least 1 until idle_timeout has passed since the pool last had a request
so it rises as soon as the load does and falls only once the load has stayed low for a whole window.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from fleetgate.scaling.provider import Provider
from fleetgate.scaling.spec import PoolSpec, RuleKind
from fleetgate.scaling.worker import WorkerState

__all__ = [
    "Autoscaler",
    "Decision",
    "PoolLoad",
    "PoolObservation",
    "ScalingPolicy",
    "Sleep",
    "Start",
    "Stop",
    "Wake",
    "WorkerView",
]

log = logging.getLogger("fleetgate.scaling")

# Awake or about to be: these count as the pool's capacity. A worker waking or restarting is STARTING.
_AWAKE = (WorkerState.STARTING, WorkerState.READY)


@dataclass(frozen=True)
class WorkerView:
    id: str
    state: WorkerState
    in_flight: int


@dataclass(frozen=True)
class PoolObservation:
    now: float  # monotonic seconds
    queued: int  # requests held in the pool's queue
    oldest_wait: float  # seconds the oldest of them has waited (0 when none)
    workers: Sequence[WorkerView]
    # when the pool last had a request (a short one can start and end between two observations)
    last_active: float = -math.inf

    @property
    def running(self) -> int:
        return sum(w.in_flight for w in self.workers)

    def count(self, *states: WorkerState) -> int:
        return sum(1 for w in self.workers if w.state in states)


@dataclass(frozen=True)
class Start:
    count: int


@dataclass(frozen=True)
class _OnWorker:
    worker_id: str


# Dataclass equality compares classes too: Wake("w1") != Stop("w1").
class Wake(_OnWorker):
    pass


class Sleep(_OnWorker):
    pass


class Stop(_OnWorker):
    pass


Action = Start | Wake | Sleep | Stop


@dataclass(frozen=True)
class Decision:
    desired: int
    raw: int
    actions: tuple[Action, ...]


def _describe(action: Action) -> str:
    if isinstance(action, Start):
        return f"start {action.count}"
    return f"{type(action).__name__.lower()} {action.worker_id}"


def _why(spec: PoolSpec, awake: int, desired: int) -> str:
    if desired > awake:
        return "load" if desired > spec.min_workers else f"min_workers {spec.min_workers}"
    if desired == 0:
        return f"idle for {spec.idle_timeout:g} s"
    return "load fell"


class ScalingPolicy:
    """One pool's scaling decisions. Feed observations in time order."""

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self._raw: collections.deque[tuple[float, int]] = collections.deque()
        self._added: collections.deque[float] = collections.deque()  # when each scale-up was decided
        self._last_busy = -math.inf

    def decide(self, obs: PoolObservation) -> Decision:
        spec = self.spec
        if obs.queued or obs.running:
            self._last_busy = obs.now
        self._last_busy = max(self._last_busy, obs.last_active)
        raw = _rule_count(spec, obs)
        while self._raw and self._raw[0][0] <= obs.now - spec.stabilization_window:
            self._raw.popleft()
        self._raw.append((obs.now, raw))
        want = max(r for _, r in self._raw)
        # The last worker goes idle_timeout after the last request, however short the window.
        if obs.now - self._last_busy < spec.idle_timeout:
            want = max(want, 1)
        desired = min(max(want, spec.min_workers), spec.max_workers)
        awake = obs.count(*_AWAKE)
        if desired > awake:
            actions = self._scale_up(obs, desired - awake)
        elif desired < awake:
            actions = self._scale_down(obs, awake - desired)
        else:
            actions = ()
        return Decision(desired=desired, raw=raw, actions=actions)

    def _scale_up(self, obs: PoolObservation, need: int) -> tuple[Action, ...]:
        spec = self.spec
        while self._added and self._added[0] <= obs.now - spec.scale_up_period:
            self._added.popleft()
        need = max(min(need, spec.scale_up_limit - len(self._added)), 0)
        # Waking takes seconds where starting takes minutes, so sleepers go first.
        sleeping = sorted(w.id for w in obs.workers if w.state is WorkerState.SLEEPING)
        wakes = [Wake(wid) for wid in sleeping[:need]]
        # Draining and sleeping workers still hold their process and GPUs.
        processes = obs.count(*_AWAKE, WorkerState.SLEEPING, WorkerState.DRAINING)
        starts = max(min(need - len(wakes), spec.max_workers - processes), 0)
        self._added.extend([obs.now] * (len(wakes) + starts))
        return (*wakes, Start(starts)) if starts else tuple(wakes)

    def _scale_down(self, obs: PoolObservation, excess: int) -> tuple[Action, ...]:
        # Only ready workers: one still starting was wanted moments ago and costs the most to start again.
        ready = sorted(
            (w for w in obs.workers if w.state is WorkerState.READY), key=lambda w: (w.in_flight, w.id)
        )
        if self.spec.worker.sleep:
            return tuple(Sleep(w.id) for w in ready[:excess])
        return tuple(Stop(w.id) for w in ready[:excess])


def _rule_count(spec: PoolSpec, obs: PoolObservation) -> int:
    rule = spec.rule
    if rule.kind is not RuleKind.QUEUE_DELAY:
        # request_count and concurrency share the arithmetic; concurrency's target also caps each worker,
        # which the gateway enforces when it picks.
        return math.ceil((obs.queued + obs.running) / rule.target)
    awake = obs.count(*_AWAKE)
    starting = obs.count(WorkerState.STARTING)
    if obs.queued and not awake:
        return 1  # nothing can serve the queue: waiting N seconds first would only add to the cold start
    if obs.queued:
        # One worker at a time: another waits until the one coming up is ready.
        late = obs.oldest_wait > rule.target and not starting
        return awake + 1 if late else awake
    # No queue: keep the workers that are serving or coming up; idle ones may go.
    return starting + sum(1 for w in obs.workers if w.state is WorkerState.READY and w.in_flight > 0)


@dataclass(frozen=True)
class PoolLoad:
    """What the gateway knows of a pool's requests."""

    queued: int
    oldest_wait: float
    in_flight: Mapping[str, int]  # streams open to each worker, by worker id
    last_active: float = -math.inf  # monotonic time a request of the pool last ended


async def tick_forever(
    tick: Callable[[], Awaitable[object]], nudged: asyncio.Event, interval: float, what: str
) -> None:
    """Tick every `interval` seconds, or at once when nudged, until cancelled."""
    while True:
        try:
            await tick()
        except Exception:
            # One bad observation must not end scaling for good; the next tick starts afresh.
            log.exception("%s tick failed", what)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nudged.wait(), interval)
        nudged.clear()


class Autoscaler:
    """Ticks each pool's policy every `interval` seconds (sooner when nudged) and applies its actions.

    Stops, sleeps and wakes run in the background (a drain can take the pool's drain deadline); a worker
    with one under way is seen as already draining or starting, so no tick asks twice.
    """

    def __init__(
        self,
        provider: Provider,
        pools: Sequence[PoolSpec],
        observe: Callable[[str], PoolLoad],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.pools = {p.name: p for p in pools}
        self.policies = {p.name: ScalingPolicy(p) for p in pools}
        self.observe = observe
        self.interval = interval
        self.clock = clock
        self.desired: dict[str, int] = {p.name: 0 for p in pools}
        self._pending: dict[str, WorkerState] = {}  # worker id -> the state its action under way leads to
        self._tasks: set[asyncio.Task[None]] = set()
        self._nudged = asyncio.Event()

    def nudge(self) -> None:
        """Tick now: a request is waiting and no worker is ready."""
        self._nudged.set()

    async def run(self) -> None:
        await tick_forever(self.tick, self._nudged, self.interval, "autoscaler")

    async def tick(self) -> dict[str, Decision]:
        decisions: dict[str, Decision] = {}
        for name, spec in self.pools.items():
            if self.provider.failure(name) is not None:
                continue
            load = self.observe(name)
            obs = PoolObservation(
                now=self.clock(),
                queued=load.queued,
                oldest_wait=load.oldest_wait,
                last_active=load.last_active,
                workers=[
                    WorkerView(w.id, self._pending.get(w.id, w.state), load.in_flight.get(w.id, 0))
                    for w in self.provider.list(name)
                ],
            )
            decision = self.policies[name].decide(obs)
            self.desired[name] = decision.desired
            decisions[name] = decision
            if decision.actions:
                awake = sum(w.state in _AWAKE for w in obs.workers)
                what = ", ".join(_describe(a) for a in decision.actions)
                # Scaling is what an operator asks about afterwards ("why did it stop?"): always logged.
                log.info("pool %s: scaling %d -> %d worker(s) (%s; %d queued, %d running): %s",
                         name, awake, decision.desired, _why(spec, awake, decision.desired), obs.queued,
                         obs.running, what)  # fmt: skip
            for action in decision.actions:
                await self._apply(spec, action)
        return decisions

    async def close(self) -> None:
        """Wait for the stops, sleeps and wakes under way."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _apply(self, spec: PoolSpec, action: Action) -> None:
        if isinstance(action, Start):
            for _ in range(action.count):
                try:
                    await self.provider.start(spec)
                except Exception as e:  # no GPU free, pool failed: the next tick sees the same and retries
                    log.warning("pool %s: cannot start a worker: %s", spec.name, e)
                    return
            return
        wid = action.worker_id

        def in_flight() -> int:
            return self.observe(spec.name).in_flight.get(wid, 0)

        if isinstance(action, Wake):
            self._background(wid, WorkerState.STARTING, self.provider.wake(wid))
        elif isinstance(action, Sleep):
            self._background(wid, WorkerState.DRAINING, self.provider.sleep(wid, in_flight))
        else:
            self._background(wid, WorkerState.DRAINING, self.provider.stop(wid, in_flight))

    def _background(self, wid: str, leads_to: WorkerState, work: Awaitable[object]) -> None:
        self._pending[wid] = leads_to

        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("scaling action on %s failed", wid)
            finally:
                self._pending.pop(wid, None)

        task = asyncio.create_task(run(), name=f"scale:{wid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
