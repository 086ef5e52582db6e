"""What every gateway replica holds and runs, made visible to the scaling leader.

Each replica writes its own small Lease (`<lease_name>-load-<identity>`, labelled with the election's
Lease name) every renew interval, its annotation carrying, per pool: requests queued (held), the oldest wait,
streams in flight per pod and seconds since its last request. The leader lists them and adds them to its own
observation, so a request held or a stream running on any replica counts in every scaling decision: a pool is
not scaled down under another replica's streams, and a cold pool wakes whichever replica the request hit.
Reports older than the lease duration (a replica that died) are ignored. This is scaling state, off the
request path: routing never reads it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fleetgate.fleet.kube import Api, call_json
from fleetgate.scaling.autoscaler import PoolLoad

__all__ = ["LoadBoard", "merge"]

log = logging.getLogger("fleetgate.kubernetes")

LABEL = "fleetgate.io/load-board"
ANNOTATION = "fleetgate.io/load"


def _name(lease: str, identity: str) -> str:
    safe = re.sub(r"[^a-z0-9-]+", "-", identity.lower()).strip("-")
    return f"{lease}-load-{safe}"[:253].rstrip("-")


def merge(local: PoolLoad, others: list[PoolLoad]) -> PoolLoad:
    """One pool's load as the whole set of replicas sees it."""
    in_flight = dict(local.in_flight)
    for o in others:
        for pod, n in o.in_flight.items():
            in_flight[pod] = in_flight.get(pod, 0) + n
    return PoolLoad(
        queued=local.queued + sum(o.queued for o in others),
        oldest_wait=max([local.oldest_wait, *(o.oldest_wait for o in others)]),
        in_flight=in_flight,
        last_active=max([local.last_active, *(o.last_active for o in others)]),
    )


class LoadBoard:
    def __init__(self, api: Api, lease: str, namespace: str, identity: str, duration: float) -> None:
        self.api = api
        self.lease = lease
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self.name = _name(lease, identity)
        self._rv: str | None = None
        self.others: dict[str, list[PoolLoad]] = {}  # pool -> the other replicas' loads, as last read

    async def publish(self, loads: Mapping[str, PoolLoad]) -> None:
        now = time.monotonic()
        report = {
            pool: {
                "queued": load.queued,
                "oldest_wait": round(load.oldest_wait, 3),
                "in_flight": {pod: n for pod, n in load.in_flight.items() if n},
                "idle_for": None if math.isinf(load.last_active) else round(now - load.last_active, 3),
            }
            for pool, load in loads.items()
        }
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {LABEL: self.lease},
                "annotations": {ANNOTATION: json.dumps(report, separators=(",", ":"))},
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.duration)),
                "renewTime": stamp,
            },
        }
        from kubernetes_asyncio.client.exceptions import ApiException

        coord = self.api.coordination
        timeout = self.api.request_timeout
        try:
            if self._rv is None:
                made = await call_json(
                    coord.create_namespaced_lease(
                        self.namespace, body, _preload_content=False, _request_timeout=timeout
                    )
                )
            else:
                body["metadata"]["resourceVersion"] = self._rv
                made = await call_json(
                    coord.replace_namespaced_lease(
                        self.name, self.namespace, body, _preload_content=False, _request_timeout=timeout
                    )
                )
        except ApiException as e:
            if e.status not in (404, 409):
                raise
            # Ours exists already (a restart under the same name) or went away: write again next time.
            self._rv = None
            if e.status == 409:
                current = await call_json(
                    coord.read_namespaced_lease(
                        self.name, self.namespace, _preload_content=False, _request_timeout=timeout
                    )
                )
                self._rv = str(current["metadata"]["resourceVersion"])
            return
        self._rv = str(made["metadata"]["resourceVersion"])

    async def read(self) -> None:
        """The other replicas' fresh reports, by pool."""
        body = await call_json(
            self.api.coordination.list_namespaced_lease(
                self.namespace,
                label_selector=f"{LABEL}={self.lease}",
                _preload_content=False,
                _request_timeout=self.api.request_timeout,
            )
        )
        now_wall = datetime.now(UTC)
        now = time.monotonic()
        others: dict[str, list[PoolLoad]] = {}
        for item in body.get("items") or []:
            spec = item.get("spec") or {}
            if spec.get("holderIdentity") == self.identity:
                continue
            try:
                renewed = datetime.strptime(spec["renewTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                report = json.loads(item["metadata"]["annotations"][ANNOTATION])
            except (KeyError, ValueError, TypeError):
                continue
            if (now_wall - renewed).total_seconds() > self.duration:
                continue  # a replica that stopped reporting (dead, or cut off)
            for pool, r in report.items():
                idle = r.get("idle_for")
                others.setdefault(pool, []).append(
                    PoolLoad(
                        queued=int(r.get("queued") or 0),
                        oldest_wait=float(r.get("oldest_wait") or 0.0),
                        in_flight={str(k): int(v) for k, v in (r.get("in_flight") or {}).items()},
                        last_active=-math.inf if idle is None else now - float(idle),
                    )
                )
        self.others = others
