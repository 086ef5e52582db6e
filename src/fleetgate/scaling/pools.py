"""Pools whose workers fleetgate starts: their providers and autoscalers, and the endpoints a worker adds
to its pool while it is ready.

The provider calls `on_change(worker)` on every state change; that is the only place endpoints of started
workers come and go. A ready worker is an endpoint (watched by the pool's monitor like any other); a draining
one stays in the pool, switched off, so its streams finish and are counted; a sleeping, restarting, stopped
or failed one is not in the pool at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from fleetgate.admission.flow import FlowQueue
from fleetgate.fleet.monitor import Monitor
from fleetgate.fleet.state import Endpoint, PoolState
from fleetgate.protocol import ServiceUnavailableError
from fleetgate.routing.capacity import stream_room
from fleetgate.scaling.autoscaler import Autoscaler, PoolLoad
from fleetgate.scaling.gpus import GpuInventory, discover_gpus
from fleetgate.scaling.local import LocalProvider
from fleetgate.scaling.spec import PoolSpec, RuleKind
from fleetgate.scaling.worker import StartupTimeline, Worker, WorkerState

if TYPE_CHECKING:
    from fleetgate.scaling.k8s_scaling import KubeScaling

__all__ = ["PoolsObserver", "WorkerFleet", "WorkerPool"]

log = logging.getLogger("fleetgate.scaling")


class PoolsObserver(Protocol):
    """What the pools report for metrics (the gateway's metrics implement it)."""

    def worker_restarted(self, pool: str, count: int) -> None: ...
    def worker_woken(self, pool: str, count: int, seconds: float | None) -> None: ...
    def cold_start(self, pool: str, total: float, phases: Mapping[str, float]) -> None: ...
    def pool_status(self, pool: str, states: Mapping[str, int], desired: int, failed: bool) -> None: ...


@dataclass
class _Seen:
    """What of a worker the metrics have counted already."""

    timeline: object = None
    phase: str = ""
    restarts: int = 0
    wakes: int = 0


@dataclass(eq=False)
class WorkerPool:
    """The gateway's side of one pool of started workers."""

    spec: PoolSpec
    endpoints: list[Endpoint]  # the pool's own list, shared with its route and state
    state: PoolState
    flow: FlowQueue
    monitor: Monitor | None = None  # set when the gateway starts
    failure: str | None = None  # why the pool failed; it starts nothing more
    last_active: float = -math.inf  # monotonic time a request last ended
    by_worker: dict[str, Endpoint] = field(default_factory=dict)
    seen: dict[str, _Seen] = field(default_factory=dict)
    starting: dict[str, StartupTimeline] = field(default_factory=dict)  # cold starts under way, by worker
    last_cold_start: float | None = None  # seconds the last completed cold start took
    # Pods of a Deployment (provider kubernetes): their endpoints come from discovery, not from here.
    kubernetes: bool = False
    blocked: Callable[[], str | None] = lambda: None  # why no worker can come up (a pod stuck Pending)

    @property
    def max_streams(self) -> int | None:
        rule = self.spec.rule
        return max(1, int(rule.target)) if rule.kind is RuleKind.CONCURRENCY else None

    def cold(self) -> bool:
        """No worker can take a request now: one that arrives is held while one starts or wakes."""
        return not any(e.enabled for e in self.endpoints)

    def problem(self) -> str | None:
        """What a request must hear at once instead of waiting: the pool failed, or no worker can start."""
        if self.failure is not None:
            return f"pool '{self.spec.name}' failed: {self.failure}"
        if self.cold():
            blocked = self.blocked()
            if blocked is not None:
                return f"pool '{self.spec.name}' has no worker ready and cannot start one: {blocked}"
        return None

    def room(self, base: float) -> float:
        """The flow queue's gate: hold requests while no worker is ready (rather than answer 503), and
        keep each worker under the concurrency rule's cap. A failed or blocked pool lets them go to hear
        why."""
        if self.problem() is not None:
            return math.inf
        live = [e for e in self.endpoints if e.routable()]
        if not live:
            return 0.0
        return min(base, sum(stream_room(e) for e in live))

    def hold_timeout(self) -> float:
        """How long a request waits for a worker to start when none is ready."""
        return self.spec.max_hold

    def cold_start_error(self) -> ServiceUnavailableError:
        """What a request held past `hold_timeout` hears: how long the start has taken, when to retry."""
        now = time.monotonic()
        name = self.spec.name
        oldest = min(self.starting.values(), key=lambda t: t.segments[0].start, default=None)
        if oldest is None:
            return ServiceUnavailableError(f"no worker of pool '{name}' is ready and none is starting")
        elapsed = now - oldest.segments[0].start
        expected = self.last_cold_start
        retry = 30 if expected is None else max(1, min(300, math.ceil(expected - elapsed)))
        return ServiceUnavailableError(
            f"no worker of pool '{name}' ready: a cold start has taken {elapsed:.0f} s so far "
            f"(now: {oldest.phase.value}); retry in about {retry} s",
            retry_after=retry,
        )

    def load(self) -> PoolLoad:
        return PoolLoad(
            queued=len(self.flow),
            oldest_wait=self.flow.oldest_wait(),
            # A pod's endpoint is named after the pod, its worker id.
            in_flight={e.name: e.in_flight for e in self.endpoints}
            if self.kubernetes
            else {wid: e.in_flight for wid, e in self.by_worker.items()},
            last_active=self.last_active,
        )


@dataclass(eq=False)
class _Group:
    """Pools sharing one GPU inventory (the same `gpus` list and log folder): one provider, one loop."""

    provider: LocalProvider
    autoscaler: Autoscaler
    task: asyncio.Task[None] | None = None


class WorkerFleet:
    """Every pool of started workers: build, then `start()` in the gateway's lifespan, `close()` after."""

    def __init__(self, pools: Sequence[WorkerPool], observer: PoolsObserver) -> None:
        self.pools = {wp.spec.name: wp for wp in pools}
        self.observer = observer
        self._groups: list[_Group] = []
        self._provider_of: dict[str, LocalProvider] = {}
        self.kube: KubeScaling | None = None  # the Kubernetes pools' scaling, set by the gateway

    async def start(self) -> None:
        if self.kube is not None:
            await self.kube.start()
        keyed: dict[tuple[tuple[str, ...] | None, str], list[WorkerPool]] = {}
        for wp in self.pools.values():
            if wp.kubernetes:
                continue
            keyed.setdefault((wp.spec.gpus, wp.spec.log_dir), []).append(wp)
        for (gpus, log_dir), members in keyed.items():
            # NVML blocks on the driver: off the loop.
            found = await asyncio.to_thread(discover_gpus, gpus, os.environ)
            provider = LocalProvider(Path(log_dir), GpuInventory(found), on_change=self._changed)
            for wp in members:
                need = wp.spec.worker.gpus_per_worker
                if need > len(found):
                    # It could never start one: fail now with the reason rather than retry every tick.
                    # In both vocabularies: the one-liner's flags and the fleet file's keys.
                    wp.failure = (
                        f"each {wp.spec.worker.engine} worker needs {need} GPU(s) and this machine has "
                        f"{len(found)} (NVML and CUDA_VISIBLE_DEVICES see no more): serve on the CPU with "
                        "--engine embedded (engine: embedded in a fleet file), or name the GPUs with --gpus "
                        "(workers.gpus)"
                    )
                    log.error("pool %s failed: %s", wp.spec.name, wp.failure)
            specs = [wp.spec for wp in members if wp.failure is None]
            interval = min(wp.spec.interval for wp in members)
            scaler = Autoscaler(provider, specs, self._observe, interval)
            group = _Group(provider, scaler)
            group.task = asyncio.create_task(scaler.run(), name="autoscaler")
            self._groups.append(group)
            for wp in members:
                self._provider_of[wp.spec.name] = provider

    def nudge(self) -> None:
        """A request is held: decide now, not at the next tick."""
        for g in self._groups:
            g.autoscaler.nudge()
        if self.kube is not None:
            self.kube.nudge()

    def workers(self, pool: str | None = None) -> Iterator[Worker]:
        for g in self._groups:
            yield from g.provider.list(pool)
        if self.kube is not None:
            yield from self.kube.provider.list(pool)

    def desired(self, pool: str) -> int:
        if self.kube is not None and pool in self.kube.autoscaler.pools:
            replicas = self.kube.provider.replicas(pool)
            return self.kube.autoscaler.desired[pool] if self.kube.elector.is_leader else (replicas or 0)
        return next((g.autoscaler.desired[pool] for g in self._groups if pool in g.autoscaler.pools), 0)

    def report(self) -> None:
        """Tell the observer each pool's workers by state (at scrape time, never on the request path)."""
        for name, wp in self.pools.items():
            counts = {st.value: 0 for st in WorkerState}
            for w in self.workers(name):
                counts[w.state.value] += 1
            self.observer.pool_status(name, counts, self.desired(name), wp.failure is not None)

    async def close(self) -> None:
        """Stop scaling, then every worker (the gateway has drained its streams by now)."""
        for g in self._groups:
            if g.task is not None:
                g.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await g.task
            await g.autoscaler.close()
            await g.provider.close()
        if self.kube is not None:
            await self.kube.close()

    # ---- the provider's and the autoscaler's callbacks ----------------------------------------------------
    def observe(self, pool: str) -> PoolLoad:
        return self._observe(pool)

    def worker_changed(self, w: Worker) -> None:
        self._changed(w)

    def blocked_changed(self, pool: str) -> None:
        self.pools[pool].flow.kick()  # held requests go to hear why (or wait on, the block lifted)

    def _observe(self, pool: str) -> PoolLoad:
        return self.pools[pool].load()

    def _changed(self, w: Worker) -> None:
        wp = self.pools[w.pool]
        self._count(wp, w)
        if w.state is WorkerState.STARTING and w.timeline is not None and w.timeline.ready_at is None:
            wp.starting[w.id] = w.timeline
        else:
            wp.starting.pop(w.id, None)
        if wp.kubernetes:
            # Discovery owns a pod's endpoint (the provider cordons the ones it drains).
            if w.state in (WorkerState.STOPPED, WorkerState.FAILED):
                wp.seen.pop(w.id, None)
            wp.flow.kick()
            return
        if w.state is WorkerState.READY:
            self._add(wp, w)
            wp.flow.kick()
        elif w.state is WorkerState.DRAINING:
            e = wp.by_worker.get(w.id)
            if e is not None:
                e.enabled = False
        else:
            self._remove(wp, w.id)
        if w.state is WorkerState.FAILED:
            wp.failure = self._provider_of[w.pool].failure(w.pool) or w.last_error or "failed"
            wp.flow.kick()  # held requests go to hear why
        if w.state in (WorkerState.STOPPED, WorkerState.FAILED):
            wp.seen.pop(w.id, None)

    def _add(self, wp: WorkerPool, w: Worker) -> None:
        e = wp.by_worker.get(w.id)
        if e is not None and e.url != w.url:  # restarted on another port
            self._remove(wp, w.id)
            e = None
        if e is None:
            # The provider has just seen /health answer and /v1/models list the name: routable at once.
            e = Endpoint(name=w.id, url=w.url, pool=w.pool, max_streams=wp.max_streams)
            e.models = frozenset({wp.spec.worker.served_model_name})
            e.discovered_at = time.monotonic()
            e.probe_ok()
            wp.by_worker[w.id] = e
            wp.endpoints.append(e)
            if wp.monitor is not None:
                wp.monitor.watch(e)
        e.enabled = True

    def _remove(self, wp: WorkerPool, worker_id: str) -> None:
        e = wp.by_worker.pop(worker_id, None)
        if e is None:
            return
        with contextlib.suppress(ValueError):
            wp.endpoints.remove(e)
        if wp.monitor is not None:
            wp.monitor.unwatch(e)
        wp.state.approx.clear(e.name)

    def _count(self, wp: WorkerPool, w: Worker) -> None:
        name = w.pool
        seen = wp.seen.setdefault(w.id, _Seen())
        if w.restarts > seen.restarts:
            self.observer.worker_restarted(name, w.restarts - seen.restarts)
            seen.restarts = w.restarts
        if w.wakes > seen.wakes:
            self.observer.worker_woken(name, w.wakes - seen.wakes, w.last_wake_seconds)
            seen.wakes = w.wakes
        t = w.timeline
        if t is not None and t.ready_at is None and t.phase.value != seen.phase:
            seen.phase = t.phase.value
            log.info("%s: %s", w.id, seen.phase)
        if t is not None and t.total is not None and seen.timeline is not t:
            seen.timeline = t
            wp.last_cold_start = t.total
            phases = {phase.value: seconds for phase, seconds in t.durations().items()}
            self.observer.cold_start(name, t.total, phases)
