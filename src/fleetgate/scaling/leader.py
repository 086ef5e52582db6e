"""Leader election with a coordination.k8s.io Lease: one gateway replica scales, the others serve and
take over within `lease_duration` seconds if it dies.

As client-go does, expiry is judged by this replica's own clock: a Lease whose record has not changed for
`lease_duration` seconds since we first saw it is free, whatever the holder's clock wrote (no clock skew).
Writes carry the resourceVersion read, so two replicas racing for a free Lease cannot both win (409).
A leader that cannot renew for `lease_duration` steps down before anyone else can take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fleetgate.fleet.kube import Api, call_json

__all__ = ["LeaseElector"]

log = logging.getLogger("fleetgate.kubernetes")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        api: Api,
        name: str,
        namespace: str,
        identity: str,
        duration: float,
        renew_interval: float,
        on_change: Callable[[bool], None] = lambda leader: None,
    ) -> None:
        self.api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self.renew_interval = renew_interval
        self.on_change = on_change
        self.is_leader = False
        self.holder: str | None = None
        self.transitions = 0
        self._observed: tuple[str, float] | None = None  # (record, monotonic time first seen)
        self._renewed_at = -float("inf")
        self._task: asyncio.Task[None] | None = None
        self.elected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="leader-election")

    async def stop(self) -> None:
        """Stop campaigning; a leader hands the Lease back so another replica takes it at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.is_leader:
            with contextlib.suppress(Exception):
                lease = await self._read()
                if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                    lease["spec"]["holderIdentity"] = None
                    await self._replace(lease)
            self._set(False)

    async def run(self) -> None:
        while True:
            try:
                await self.try_acquire_or_renew()
            except Exception as e:  # the API server is down, or a conflict: try again next round
                log.debug("lease %s: %s", self.name, e)
            if self.is_leader and time.monotonic() - self._renewed_at > self.duration:
                log.warning("lease %s: not renewed for %.0f s; stepping down", self.name, self.duration)
                self._set(False)
            await asyncio.sleep(self.renew_interval)

    async def try_acquire_or_renew(self) -> bool:
        now = time.monotonic()
        lease = await self._read()
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(acquire=True, transitions=0),
            }
            await self._call(
                self.api.coordination.create_namespaced_lease(
                    self.namespace, body, _preload_content=False, _request_timeout=self.api.request_timeout
                )
            )
            return self._won(now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        self.holder = holder
        record = f"{holder}|{spec.get('renewTime')}|{(lease.get('metadata') or {}).get('resourceVersion')}"
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, now)
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        expired = now - self._observed[1] > duration
        if holder is not None and holder != self.identity and not expired:
            self._set(False)
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        mine = holder == self.identity
        lease["spec"] = {
            **spec,
            **self._spec(acquire=not mine, transitions=transitions if mine else transitions + 1),
        }
        if mine:
            lease["spec"]["acquireTime"] = spec.get("acquireTime")
        await self._replace(lease)
        return self._won(now)

    def _won(self, now: float) -> bool:
        self._renewed_at = now
        self.holder = self.identity
        self._set(True)
        return True

    def _spec(self, *, acquire: bool, transitions: int) -> dict[str, Any]:
        stamp = _now_micro()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "renewTime": stamp,
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = stamp
        return spec

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            if leader:
                self.transitions += 1
                self.elected.set()
                log.info("lease %s: %s is the scaling leader", self.name, self.identity)
            else:
                self.elected.clear()
                log.info("lease %s: %s is no longer the leader", self.name, self.identity)
            self.on_change(leader)

    async def _read(self) -> dict[str, Any] | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await self._call(
                self.api.coordination.read_namespaced_lease(
                    self.name,
                    self.namespace,
                    _preload_content=False,
                    _request_timeout=self.api.request_timeout,
                )
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def _replace(self, lease: dict[str, Any]) -> None:
        await self._call(
            self.api.coordination.replace_namespaced_lease(
                self.name,
                self.namespace,
                lease,
                _preload_content=False,
                _request_timeout=self.api.request_timeout,
            )
        )

    @staticmethod
    async def _call(call: Any) -> dict[str, Any]:
        return await call_json(call)
