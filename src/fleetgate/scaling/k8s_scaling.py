"""Scaling Kubernetes pools from several gateway replicas: the Lease holder runs the autoscaler (the same
policy and actions as for local workers) on the load of every replica (each publishes its own on the load
board); every other replica also wakes a pool at zero replicas for the requests it holds at once (it may
scale up from zero, never down), so a cold pool wakes whichever replica the request hit without waiting for
the leader's next read. Every replica watches the pods, so each can report them and take over at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from fleetgate.fleet.kube import Api
from fleetgate.scaling.autoscaler import Autoscaler, PoolLoad, tick_forever
from fleetgate.scaling.kubernetes import KubernetesProvider, PodTarget
from fleetgate.scaling.leader import LeaseElector
from fleetgate.scaling.load_board import LoadBoard, merge
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
        board: LoadBoard | None = None,
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
        self.autoscaler = Autoscaler(self.provider, specs, self._observe_all, self.interval)
        self.elector = elector
        self.board = board
        self.observe = observe
        self._published = -float("inf")
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
        await tick_forever(self.tick, self._nudged, self.interval, "kubernetes scaling")

    def _observe_all(self, pool: str) -> PoolLoad:
        """This replica's load of the pool, plus what the others last published."""
        local = self.observe(pool)
        others = self.board.others.get(pool, []) if self.board is not None else []
        return merge(local, others) if others else local

    async def _share(self, leader: bool) -> None:
        board = self.board
        if board is None or time.monotonic() - self._published < self.elector.renew_interval:
            return
        self._published = time.monotonic()
        try:
            await board.publish({name: self.observe(name) for name in self.autoscaler.pools})
            if leader:
                await board.read()
        except Exception as e:  # the API server is down: decide on what we know
            log.debug("load board: %s", e)

    async def tick(self) -> None:
        leader = self.elector.is_leader
        await self._share(leader)
        if leader and not self._was_leader:
            await self.provider.uncordon_stale()
        self._was_leader = leader
        if leader:
            # Another replica may have woken a pool from zero (or a person scaled it): act on the count now.
            try:
                for name in self.autoscaler.pools:
                    await self.provider.read_replicas(name)
            except Exception as e:  # the API server is down: nothing could be patched either
                log.debug("cannot read replicas: %s", e)
                return
            await self.autoscaler.tick()
            return
        for name in self.autoscaler.pools:
            # Held here, unseen by the leader: wake the pool from zero (the leader takes it on from there).
            held = self.observe(name).queued and not self.provider.replicas(name)
            try:
                if held and await self.provider.read_replicas(name) == 0:
                    await self.provider.scale(name, 1)
            except Exception as e:  # the API server is down: the next tick tries again
                log.debug("cannot wake pool %s: %s", name, e)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.autoscaler.close()
        await self.elector.stop()
        await self.provider.close()
