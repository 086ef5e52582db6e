"""The Kubernetes provider: a pool's workers are the pods of a Deployment, scaled through its /scale
subresource, with the same autoscaler, policies and flow queue as local workers.

  start   replicas + 1 (never above max_workers); until the ReplicaSet creates the pod, a placeholder
          worker stands for it so the policy does not ask twice
  stop    the pod chosen by the policy (least in flight) is cordoned at once (no new requests here), marked
          `fleetgate.io/draining` (so every gateway replica stops sending it work) and
          `controller.kubernetes.io/pod-deletion-cost` (so the ReplicaSet removes that one and no other);
          its streams finish (up to drain_deadline), then replicas - 1
  sleep   cordon, drain, POST /sleep on the pod (vLLM's sleep mode); wake: POST /wake_up
  state   a pod is READY when its endpoint is ready in the pool's EndpointSlices; STARTING until then, with
          the reason when it cannot get there (Unschedulable, CrashLoopBackOff, an image that will not pull)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from fleetgate.fleet.k8s_discovery import EndpointSource
from fleetgate.fleet.kube import Api, ListWatch, Obj, call_json
from fleetgate.scaling.spec import PoolSpec
from fleetgate.scaling.worker import StartupTimeline, Worker, WorkerState

__all__ = ["DELETION_COST", "DRAINING", "KubernetesProvider", "PodTarget", "pod_problem"]

log = logging.getLogger("fleetgate.kubernetes")

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
DRAINING = "fleetgate.io/draining"
# The ReplicaSet removes the pod with the lowest cost first; the others keep the default 0.
DRAIN_COST = "-2147483647"
POLL_INTERVAL = 0.1
SLEEP_TIMEOUT = 300.0
# Waiting reasons of a container that will not start by itself.
_STUCK = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName"}
)


def pod_problem(pod: Obj) -> str | None:
    """Why a pod is not becoming ready, when the API says so: not schedulable, crash-looping, no image."""
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"Pending: {c.get('reason') or 'not scheduled'}: {c.get('message') or ''}".rstrip(": ")
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _STUCK:
            last = ((cs.get("lastState") or {}).get("terminated")) or {}
            detail = waiting.get("message") or (
                f"last exit code {last.get('exitCode')}" if last.get("exitCode") is not None else ""
            )
            restarts = cs.get("restartCount", 0)
            return f"{reason} ({restarts} restarts){': ' + detail if detail else ''}"
    return None


@dataclass(frozen=True)
class PodTarget:
    """Where a pool's pods live: its Deployment, and the EndpointSlices that say which are ready."""

    deployment: str
    namespace: str
    source: EndpointSource


@dataclass(eq=False)
class _Pool:
    spec: PoolSpec
    target: PodTarget
    replicas: int | None = None  # the Deployment's spec.replicas as last read or written
    selector: str = ""
    pods: ListWatch | None = None
    workers: dict[str, Worker] = field(default_factory=dict)  # pod name -> worker
    placeholders: list[Worker] = field(default_factory=list)  # replicas the ReplicaSet has not created
    sleeping: set[str] = field(default_factory=set)
    draining: set[str] = field(default_factory=set)  # drained by this replica
    blocked: str | None = None


class KubernetesProvider:
    """start/stop/list (and sleep/wake) for pods of Deployments. `on_change(worker)` after every state
    change, as the local provider does; `on_blocked(pool)` when a pool's reason to be stuck changes."""

    def __init__(
        self,
        api: Api,
        pools: Mapping[str, tuple[PoolSpec, PodTarget]],
        *,
        on_change: Callable[[Worker], None],
        on_blocked: Callable[[str], None],
        watch_timeout: int,
        retry_max: float,
    ) -> None:
        self.api = api
        self._pools = {name: _Pool(spec, target) for name, (spec, target) in pools.items()}
        self._on_change = on_change
        self._on_blocked = on_blocked
        self._watch_timeout = watch_timeout
        self._retry_max = retry_max
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SLEEP_TIMEOUT))
        self.patches = 0  # /scale patches sent (for tests and benchmarks)
        self.last_patch_at: float | None = None

    async def open(self) -> None:
        """Read each Deployment's selector and replicas, and start watching its pods. A Deployment the API
        server cannot give yet is read again by the watch loop's retries (the gateway serves meanwhile)."""
        for p in self._pools.values():
            p.target.source.listeners.append(lambda p=p: self._refresh(p))  # type: ignore[misc]
            await self._start_pool(p)

    async def _start_pool(self, p: _Pool) -> None:
        t = p.target
        while True:
            try:
                dep = await self._raw(
                    self.api.apps.read_namespaced_deployment(
                        t.deployment, t.namespace, _preload_content=False
                    )
                )
                break
            except Exception as e:  # down, or not there yet: the gateway serves meanwhile
                log.warning("pool %s: cannot read deployment %s yet: %s", p.spec.name, t.deployment, e)
                await asyncio.sleep(min(1.0, self._retry_max))
        labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        p.selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        p.replicas = int((dep.get("spec") or {}).get("replicas") or 0)
        p.pods = ListWatch(
            f"{p.spec.name}: pods {p.selector}",
            self.api.core.list_namespaced_pod,
            {"namespace": t.namespace, "label_selector": p.selector},
            lambda _objs: self._refresh(p),
            watch_timeout=self._watch_timeout,
            request_timeout=self.api.request_timeout,
            retry_max=self._retry_max,
        )
        p.pods.start()
        self._refresh(p)

    async def close(self) -> None:
        for p in self._pools.values():
            if p.pods is not None:
                await p.pods.stop()
        await self._http.close()

    # ---- the provider protocol ---------------------------------------------------------------------------
    async def start(self, spec: PoolSpec) -> Worker:
        """One more replica (a placeholder worker until its pod appears)."""
        p = self._pools[spec.name]
        current = p.replicas or 0
        if current >= spec.max_workers:
            raise RuntimeError(
                f"pool {spec.name}: already {current} replicas (max_workers {spec.max_workers})"
            )
        await self.scale(spec.name, current + 1)
        self._refresh(p)
        return p.placeholders[-1] if p.placeholders else next(iter(p.workers.values()))

    async def scale(self, pool: str, replicas: int) -> None:
        """PATCH the Deployment's /scale subresource."""
        p = self._pools[pool]
        t = p.target
        body = {"spec": {"replicas": replicas}}
        await self._raw(
            self.api.apps.patch_namespaced_deployment_scale(
                t.deployment,
                t.namespace,
                body,
                _preload_content=False,
                _request_timeout=self.api.request_timeout,
            )
        )
        p.replicas = replicas
        self.patches += 1
        self.last_patch_at = time.monotonic()
        log.info("pool %s: deployment %s scaled to %d", pool, t.deployment, replicas)

    async def read_replicas(self, pool: str) -> int:
        """The Deployment's replicas now (another gateway replica may have changed them)."""
        p = self._pools[pool]
        t = p.target
        body = await self._raw(
            self.api.apps.read_namespaced_deployment_scale(
                t.deployment, t.namespace, _preload_content=False, _request_timeout=self.api.request_timeout
            )
        )
        p.replicas = int((body.get("spec") or {}).get("replicas") or 0)
        self._refresh(p)
        return p.replicas

    def replicas(self, pool: str) -> int | None:
        return self._pools[pool].replicas

    async def stop(self, worker_id: str, in_flight: Callable[[], int] | None = None) -> None:
        """Drain the pod, mark it the one to delete, then one replica fewer."""
        p, w = self._find(worker_id)
        if w is None:
            return
        if w in p.placeholders:
            await self.scale(p.spec.name, max(0, (p.replicas or 1) - 1))
            self._refresh(p)
            return
        p.draining.add(w.id)
        p.target.source.cordon(w.id)
        self._set(w, WorkerState.DRAINING)
        await self._annotate(p, w.id, {DRAINING: "true", DELETION_COST: DRAIN_COST})
        if in_flight is not None:
            deadline = time.monotonic() + p.spec.drain_deadline
            while in_flight() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(POLL_INTERVAL)
        await self.scale(p.spec.name, max(0, (p.replicas or 1) - 1))

    def list(self, pool: str | None = None) -> list[Worker]:
        out: list[Worker] = []
        for name, p in self._pools.items():
            if pool is None or pool == name:
                out.extend(p.workers.values())
                out.extend(p.placeholders)
        return out

    async def sleep(self, worker_id: str, in_flight: Callable[[], int] | None = None) -> None:
        p, w = self._find(worker_id)
        if w is None or w.state is not WorkerState.READY:
            raise ValueError(f"worker {worker_id} is not ready")
        p.target.source.cordon(w.id)
        p.sleeping.add(w.id)
        self._set(w, WorkerState.DRAINING)
        if in_flight is not None:
            deadline = time.monotonic() + p.spec.drain_deadline
            while in_flight() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(POLL_INTERVAL)
        try:
            async with self._http.post(f"{w.url}/sleep", params={"level": p.spec.worker.sleep_level}) as r:
                r.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as e:
            w.last_error = f"sleep failed: {e!r}"
            p.sleeping.discard(w.id)
            p.target.source.uncordon(w.id)
        self._refresh(p)

    async def wake(self, worker_id: str) -> float | None:
        p, w = self._find(worker_id)
        if w is None or w.id not in p.sleeping:
            raise ValueError(f"worker {worker_id} is not sleeping")
        self._set(w, WorkerState.STARTING)
        t0 = time.monotonic()
        try:
            async with self._http.post(f"{w.url}/wake_up") as r:
                r.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as e:
            w.last_error = f"wake failed: {e!r}"
            self._set(w, WorkerState.SLEEPING)
            return None
        seconds = time.monotonic() - t0
        w.wakes += 1
        w.last_wake_seconds = seconds
        p.sleeping.discard(w.id)
        p.target.source.uncordon(w.id)
        self._refresh(p)
        return seconds

    def failure(self, pool: str) -> str | None:
        return None  # Kubernetes keeps retrying pods; what blocks them is `blocked`, not a failure

    def blocked(self, pool: str) -> str | None:
        """Why no worker of the pool can come up, when every one coming up is stuck (and none is ready)."""
        return self._pools[pool].blocked

    async def uncordon_stale(self) -> None:
        """A new leader: pods a previous leader began to drain but did not scale away serve again."""
        for p in self._pools.values():
            if p.pods is None:
                continue
            for obj in list(p.pods.objects.values()):
                meta = obj.get("metadata") or {}
                name = str(meta.get("name"))
                if (meta.get("annotations") or {}).get(DRAINING) and not meta.get("deletionTimestamp"):
                    if name in p.draining:
                        continue
                    with contextlib.suppress(Exception):
                        await self._annotate(p, name, {DRAINING: None, DELETION_COST: None})

    # ---- internals ---------------------------------------------------------------------------------------
    def _find(self, worker_id: str) -> tuple[_Pool, Worker | None]:
        for p in self._pools.values():
            if worker_id in p.workers:
                return p, p.workers[worker_id]
            for w in p.placeholders:
                if w.id == worker_id:
                    return p, w
        return next(iter(self._pools.values())), None

    async def _annotate(self, p: _Pool, pod: str, annotations: Mapping[str, str | None]) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        await self._raw(
            self.api.core.patch_namespaced_pod(
                pod,
                p.target.namespace,
                body,
                _preload_content=False,
                _request_timeout=self.api.request_timeout,
            )
        )

    @staticmethod
    async def _raw(call: Any) -> dict[str, Any]:
        return await call_json(call)

    def _set(self, w: Worker, state: WorkerState) -> None:
        if w.state is not state:
            w.state = state
            if state is WorkerState.READY and w.timeline is not None and w.timeline.ready_at is None:
                w.timeline.finish(time.monotonic())
            self._on_change(w)

    def _refresh(self, p: _Pool) -> None:
        """Workers from the pods (and the slices' readiness), placeholders for pods not created yet."""
        now = time.monotonic()
        objs = p.pods.objects if p.pods is not None else {}
        ready = p.target.source.addresses
        seen: set[str] = set()
        alive = 0
        for obj in objs.values():
            meta = obj.get("metadata") or {}
            status = obj.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                continue
            name = str(meta.get("name"))
            seen.add(name)
            w = p.workers.get(name)
            if w is None:
                w = Worker(id=name, spec=p.spec, log_path=Path(f"pod/{name}"), gpus=())
                w.timeline = StartupTimeline(now)
                p.workers[name] = w
            w.host = str(status.get("podIP") or "")
            addr = ready.get(name)
            w.port = addr.port if addr is not None else w.port
            terminating = meta.get("deletionTimestamp") is not None
            marked = (meta.get("annotations") or {}).get(DRAINING) is not None
            if marked and not terminating and name not in p.draining:
                p.target.source.cordon(name)  # another replica drains it
            w.last_error = pod_problem(obj)
            if terminating or marked or name in p.draining:
                state = WorkerState.DRAINING
            elif name in p.sleeping:
                state = WorkerState.SLEEPING if w.state is not WorkerState.STARTING else w.state
            elif addr is not None and addr.ready:
                state = WorkerState.READY
            else:
                state = WorkerState.STARTING
            if not terminating:
                alive += 1
            self._set(w, state)
        for name in [n for n in p.workers if n not in seen]:
            w = p.workers.pop(name)
            p.draining.discard(name)
            p.sleeping.discard(name)
            self._set(w, WorkerState.STOPPED)
        missing = max(0, (p.replicas or 0) - alive)
        while len(p.placeholders) > missing:
            self._set(p.placeholders.pop(), WorkerState.STOPPED)
        while len(p.placeholders) < missing:
            w = Worker(
                id=f"{p.spec.name}-pending-{len(p.placeholders) + 1}",
                spec=p.spec,
                log_path=Path("pod/pending"),
                gpus=(),
            )
            w.timeline = StartupTimeline(now)
            w.last_error = None
            p.placeholders.append(w)
            self._on_change(w)
        self._update_blocked(p)

    def _update_blocked(self, p: _Pool) -> None:
        workers = list(p.workers.values())
        coming = [w for w in workers if w.state is WorkerState.STARTING]
        stuck = [w for w in coming if w.last_error]
        reason = None
        if coming and len(stuck) == len(coming) and not any(w.state is WorkerState.READY for w in workers):
            w = stuck[0]
            reason = f"pod {w.id} cannot start: {w.last_error}"
        if reason != p.blocked:
            p.blocked = reason
            if reason:
                log.warning("pool %s: %s", p.spec.name, reason)
            self._on_blocked(p.spec.name)
