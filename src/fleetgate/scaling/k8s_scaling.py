"""Scaling Kubernetes pools from several gateway replicas: the Lease holder runs the autoscaler (the same
policy and actions as for local workers); every other replica only wakes a pool at zero replicas for the
requests it holds (it may scale up from zero, never down), so a cold pool wakes whichever replica the
request hit. Every replica watches the pods, so each can report them and take over at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from fleetgate.fleet.kube import Api
from fleetgate.scaling.autoscaler import Autoscaler, PoolLoad
from fleetgate.scaling.kubernetes import KubernetesProvider, PodTarget
from fleetgate.scaling.leader import LeaseElector
from fleetgate.scaling.spec import PoolSpec
from fleetgate.scaling.worker import Worker

__all__ = ["KubeScaling"]

log = logging.getLogger("fleetgate.kubernetes")


class KubeScaling:
    def __init__(
        self,
        api: Api,
        pools: Mapping[str, tuple[PoolSpec, PodTarget]],
        elector: LeaseElector,
        *,
        observe: Callable[[str], PoolLoad],
        on_change: Callable[[Worker], None],
        on_blocked: Callable[[str], None],
        watch_timeout: int,
        retry_max: float,
    ) -> None:
        self.provider = KubernetesProvider(
            api,
            pools,
            on_change=on_change,
            on_blocked=on_blocked,
            watch_timeout=watch_timeout,
            retry_max=retry_max,
        )
        specs = [spec for spec, _ in pools.values()]
        self.interval = min(s.interval for s in specs)
        self.autoscaler = Autoscaler(self.provider, specs, observe, self.interval)
        self.elector = elector
        self.observe = observe
        self._nudged = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._was_leader = False

    async def start(self) -> None:
        await self.provider.open()
        self.elector.start()
        self._task = asyncio.create_task(self.run(), name="kubernetes-scaling")

    def nudge(self) -> None:
        self._nudged.set()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("kubernetes scaling tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), self.interval)
            self._nudged.clear()

    async def tick(self) -> None:
        leader = self.elector.is_leader
        if leader and not self._was_leader:
            await self.provider.uncordon_stale()
        self._was_leader = leader
        if leader:
            await self.autoscaler.tick()
            return
        for name in self.autoscaler.pools:
            # Held here, unseen by the leader: wake the pool from zero (the leader takes it on from there).
            held = self.observe(name).queued and not self.provider.replicas(name)
            if held and await self.provider.read_replicas(name) == 0:
                await self.provider.scale(name, 1)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.autoscaler.close()
        await self.elector.stop()
        await self.provider.close()
