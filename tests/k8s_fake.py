"""A Kubernetes API server for the tests, on loopback, speaking the real wire: list and watch with
resourceVersion (bookmarks on request, a 410 Gone ERROR event for a compacted version, timeoutSeconds),
Deployments and their /scale subresource, Pods, EndpointSlices, Events and Leases (create, read, replace with
optimistic concurrency). Behind it, the controllers a cluster runs: a ReplicaSet that creates and deletes
pods (honouring controller.kubernetes.io/pod-deletion-cost), a scheduler with a GPU budget (pods beyond it
stay Pending, Unschedulable), and the EndpointSlice controller (ready / serving / terminating).

The kubelet is separate (tests/k8s_kubelet.py): it watches this store in-process and runs a simulator per pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

Obj = dict[str, Any]

# (group path, kind, plural): the resources this server knows.
KINDS = {
    "pods": ("/api/v1", "Pod"),
    "events": ("/api/v1", "Event"),
    "services": ("/api/v1", "Service"),
    "deployments": ("/apis/apps/v1", "Deployment"),
    "endpointslices": ("/apis/discovery.k8s.io/v1", "EndpointSlice"),
    "leases": ("/apis/coordination.k8s.io/v1", "Lease"),
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(obj: Obj, selector: str | None) -> bool:
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


def _merge(target: Obj, patch: Obj) -> Obj:
    """JSON merge patch (RFC 7386), which strategic merge equals for the fields used here."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


@dataclass(eq=False)
class _Watcher:
    plural: str
    namespace: str
    selector: str | None
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)


class FakeKube:
    """The API server and the cluster's controllers, on one event loop."""

    def __init__(self, *, bookmark_interval: float = 0.5, gpus: int | None = None) -> None:
        self.bookmark_interval = bookmark_interval
        self.gpus = gpus  # pods that can be scheduled at once (None: any number)
        self.rv = 0
        self.compacted = 0  # watches from a version before this get 410 Gone
        self.store: dict[tuple[str, str, str], Obj] = {}  # (plural, namespace, name) -> object
        self.history: list[tuple[int, str, str, str, Obj]] = []  # rv, plural, namespace, type, object
        self.watchers: set[_Watcher] = set()
        self.requests: list[tuple[str, str]] = []  # method, path
        self.scale_patches: list[tuple[float, str, int]] = []  # loop time, deployment, replicas
        self.deleted_pods: list[Obj] = []  # pods as they were when the ReplicaSet chose them
        self.ready_at: dict[str, float] = {}  # pod -> loop time its endpoint first turned ready in a slice
        self.listeners: list[Callable[[str, str, Obj], None]] = []  # (plural, type, object), e.g. the kubelet
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._names = itertools.count(1)
        self._connections: set[web.StreamResponse] = set()
        self.up = False

    # ---- the server ----------------------------------------------------------------------------------------
    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.up = True

    async def stop(self) -> None:
        """The API server goes away: open watches are cut, new connections refused."""
        self.up = False
        for w in list(self.watchers):
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, *, compact: bool = True) -> None:
        """Stop and start on the same port; `compact` forgets history (old versions answer 410)."""
        await self.stop()
        if compact:
            self.compact()
        await self.start(self.port)

    def compact(self) -> None:
        self.compacted = self.rv
        self.history.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- the store -----------------------------------------------------------------------------------------
    def get(self, plural: str, ns: str, name: str) -> Obj | None:
        return self.store.get((plural, ns, name))

    def list(self, plural: str, ns: str, selector: str | None = None) -> list[Obj]:
        return [o for (p, n, _), o in self.store.items() if p == plural and n == ns and _matches(o, selector)]

    def put(self, plural: str, obj: Obj, *, expect_rv: str | None = None) -> Obj:
        """Create or update; `expect_rv` is the optimistic-concurrency check of an update."""
        meta = obj.setdefault("metadata", {})
        ns, name = meta.setdefault("namespace", "default"), meta["name"]
        old = self.store.get((plural, ns, name))
        if expect_rv is not None and (old is None or old["metadata"]["resourceVersion"] != expect_rv):
            raise web.HTTPConflict(
                text=json.dumps(_status(409, "Conflict", f"{plural} {name} was modified")),
                content_type="application/json",
            )
        base, kind = KINDS[plural]
        obj["apiVersion"] = base.removeprefix("/apis/").removeprefix("/api/") or "v1"
        obj["kind"] = kind
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        if old is None:
            meta.setdefault("uid", f"uid-{self.rv}")
            meta.setdefault("creationTimestamp", _now())
        self.store[(plural, ns, name)] = obj
        self._emit(plural, ns, "ADDED" if old is None else "MODIFIED", obj)
        self._react(plural, obj)
        return obj

    def remove(self, plural: str, ns: str, name: str) -> Obj | None:
        obj = self.store.pop((plural, ns, name), None)
        if obj is not None:
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._emit(plural, ns, "DELETED", obj)
            self._react(plural, obj)
        return obj

    def _emit(self, plural: str, ns: str, kind: str, obj: Obj) -> None:
        snapshot = copy.deepcopy(obj)
        self.history.append((self.rv, plural, ns, kind, snapshot))
        for w in list(self.watchers):
            if w.plural == plural and w.namespace == ns and _matches(snapshot, w.selector):
                w.queue.put_nowait((kind, snapshot))
        for listener in self.listeners:
            listener(plural, kind, snapshot)

    def event(self, ns: str, involved: Obj, reason: str, message: str, kind: str = "Warning") -> None:
        meta = involved["metadata"]
        self.put(
            "events",
            {
                "metadata": {"name": f"{meta['name']}.{next(self._names)}", "namespace": ns},
                "involvedObject": {"kind": involved.get("kind"), "name": meta["name"], "namespace": ns},
                "reason": reason,
                "message": message,
                "type": kind,
                "lastTimestamp": _now(),
            },
        )

    # ---- objects tests create ---------------------------------------------------------------------------
    def add_deployment(self, name: str, labels: dict[str, str], replicas: int = 0, port: int = 8000) -> None:
        self.put(
            "deployments",
            {
                "metadata": {"name": name, "namespace": "default", "labels": dict(labels)},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": dict(labels)},
                    "template": {
                        "metadata": {"labels": dict(labels)},
                        "spec": {
                            "containers": [
                                {"name": "vllm", "ports": [{"name": "http", "containerPort": port}]}
                            ]
                        },
                    },
                },
                "status": {"replicas": 0, "readyReplicas": 0},
            },
        )

    def set_replicas(self, name: str, replicas: int) -> None:
        dep = copy.deepcopy(self.get("deployments", "default", name))
        assert dep is not None
        dep["spec"]["replicas"] = replicas
        self.put("deployments", dep)

    def add_service(self, name: str, selector: dict[str, str], port: int) -> None:
        self.put(
            "services",
            {
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "selector": dict(selector),
                    "ports": [{"name": "http", "port": 80, "targetPort": port}],
                },
            },
        )

    # ---- controllers -----------------------------------------------------------------------------------
    def _react(self, plural: str, obj: Obj) -> None:
        if plural == "deployments":
            self._reconcile_replicas(obj["metadata"]["name"], obj["metadata"]["namespace"])
        elif plural == "pods":
            self._reconcile_slices(obj["metadata"]["namespace"])
            owner = (obj["metadata"].get("labels") or {}).get("fake/deployment")
            if owner and (obj["metadata"]["namespace"], owner):
                self._reconcile_replicas(owner, obj["metadata"]["namespace"])
            self._schedule(obj["metadata"]["namespace"])
        elif plural == "services":
            self._reconcile_slices(obj["metadata"]["namespace"])

    def _reconcile_replicas(self, name: str, ns: str) -> None:
        """The ReplicaSet: as many live pods as spec.replicas; which to delete in the ReplicaSet's order."""
        dep = self.get("deployments", ns, name)
        if dep is None:
            return
        want = int(dep["spec"].get("replicas") or 0)
        pods = [
            p
            for p in self.list("pods", ns)
            if (p["metadata"].get("labels") or {}).get("fake/deployment") == name
            and p["metadata"].get("deletionTimestamp") is None
        ]
        while len(pods) < want:
            labels = {**dep["spec"]["selector"]["matchLabels"], "fake/deployment": name}
            pod = self.put(
                "pods",
                {
                    "metadata": {
                        "name": f"{name}-{next(self._names):05x}",
                        "namespace": ns,
                        "labels": labels,
                    },
                    "spec": copy.deepcopy(dep["spec"]["template"]["spec"]),
                    "status": {"phase": "Pending", "conditions": []},
                },
            )
            pods.append(pod)
        if len(pods) > want:

            def rank(p: Obj) -> tuple[int, int, int, int]:
                st = p.get("status") or {}
                scheduled = any(
                    c.get("type") == "PodScheduled" and c.get("status") == "True"
                    for c in st.get("conditions") or []
                )
                ready = any(
                    c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
                )
                cost = int(
                    (p["metadata"].get("annotations") or {}).get(
                        "controller.kubernetes.io/pod-deletion-cost", 0
                    )
                )
                return (int(scheduled), int(ready), cost, -int(p["metadata"]["resourceVersion"]))

            for pod in sorted(pods, key=rank)[: len(pods) - want]:
                self.deleted_pods.append(copy.deepcopy(pod))
                self.delete_pod(ns, pod["metadata"]["name"])
        ready = sum(
            1
            for p in pods
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        )
        status = dep.setdefault("status", {})
        if status.get("readyReplicas") != ready or status.get("replicas") != len(pods):
            status.update({"readyReplicas": ready, "replicas": len(pods)})

    def delete_pod(self, ns: str, name: str) -> None:
        """Graceful deletion: the pod turns terminating; the kubelet removes it once its process ended."""
        pod = self.get("pods", ns, name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        pod = copy.deepcopy(pod)
        pod["metadata"]["deletionTimestamp"] = _now()
        self.put("pods", pod)

    def _schedule(self, ns: str) -> None:
        """Bind Pending pods while GPUs last; the rest are Unschedulable (with a FailedScheduling event)."""
        pods = self.list("pods", ns)
        bound = [
            p
            for p in pods
            if any(
                c.get("type") == "PodScheduled" and c.get("status") == "True"
                for c in p["status"].get("conditions") or []
            )
        ]
        used = sum(1 for p in bound if not p["metadata"].get("deletionTimestamp"))
        for p in pods:
            if p in bound or p["metadata"].get("deletionTimestamp"):
                continue
            conds = [c for c in p["status"].get("conditions") or [] if c.get("type") != "PodScheduled"]
            status: tuple[str, str | None, str | None]
            if self.gpus is None or used < self.gpus:
                used += 1
                status = "True", None, None
            else:
                status = "False", "Unschedulable", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
            cond = {"type": "PodScheduled", "status": status[0]}
            if status[1]:
                cond.update(reason=status[1], message=status[2])
            old = [c for c in p["status"].get("conditions") or [] if c.get("type") == "PodScheduled"]
            if old and old[0] == cond:
                continue
            new = copy.deepcopy(p)
            new["status"]["conditions"] = [*conds, cond]
            self.put("pods", new)
            if status[1]:
                self.event(ns, new, "FailedScheduling", status[2] or "")

    def _reconcile_slices(self, ns: str) -> None:
        """One EndpointSlice per Service: every pod it selects that has an IP, with its conditions."""
        for svc in self.list("services", ns):
            sel = svc["spec"]["selector"]
            port = svc["spec"]["ports"][0]["targetPort"]
            endpoints: list[Obj] = []
            for p in self.list("pods", ns):
                labels = p["metadata"].get("labels") or {}
                ip = (p.get("status") or {}).get("podIP")
                if not ip or any(labels.get(k) != v for k, v in sel.items()):
                    continue
                ready = any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in p["status"].get("conditions") or []
                )
                terminating = p["metadata"].get("deletionTimestamp") is not None
                if ready and not terminating:
                    self.ready_at.setdefault(p["metadata"]["name"], asyncio.get_running_loop().time())
                endpoints.append(
                    {
                        "addresses": [ip],
                        "conditions": {
                            "ready": ready and not terminating,
                            "serving": ready,
                            "terminating": terminating,
                        },
                        "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": ns},
                    }
                )
            endpoints.sort(key=lambda e: e["targetRef"]["name"])
            name = f"{svc['metadata']['name']}-x1"
            old = self.get("endpointslices", ns, name)
            if old is not None and old["endpoints"] == endpoints:
                continue
            self.put(
                "endpointslices",
                {
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "labels": {"kubernetes.io/service-name": svc["metadata"]["name"]},
                    },
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                    "endpoints": endpoints,
                },
            )

    # ---- HTTP ----------------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        parts = request.path.strip("/").split("/")
        try:
            i = parts.index("namespaces")
        except ValueError:
            return self._error(404, "NotFound", f"no route {request.path}")
        ns = parts[i + 1]
        rest = parts[i + 2 :]
        plural = rest[0] if rest else ""
        if plural not in KINDS:
            return self._error(404, "NotFound", f"no resource {plural}")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        try:
            if name is None:
                if request.method == "GET":
                    if request.query.get("watch", "").lower() in ("true", "1"):
                        return await self._watch(request, plural, ns)
                    return self._list(request, plural, ns)
                if request.method == "POST":
                    body = await request.json()
                    if self.get(plural, ns, body["metadata"]["name"]) is not None:
                        return self._error(
                            409, "AlreadyExists", f"{plural} {body['metadata']['name']} exists"
                        )
                    body["metadata"]["namespace"] = ns
                    return web.json_response(self.put(plural, body), status=201)
            elif sub == "scale" and plural == "deployments":
                return await self._scale(request, ns, name)
            else:
                obj = self.get(plural, ns, name)
                if obj is None:
                    return self._error(404, "NotFound", f'{plural} "{name}" not found')
                if request.method == "GET":
                    return web.json_response(obj)
                if request.method == "PUT":
                    body = await request.json()
                    rv = (body.get("metadata") or {}).get("resourceVersion")
                    return web.json_response(self.put(plural, body, expect_rv=rv))
                if request.method == "PATCH":
                    patched = _merge(copy.deepcopy(obj), await request.json())
                    return web.json_response(self.put(plural, patched))
                if request.method == "DELETE" and plural == "pods":
                    self.delete_pod(ns, name)
                    return web.json_response(self.get(plural, ns, name) or obj)
        except web.HTTPException as e:
            return e
        return self._error(405, "MethodNotAllowed", f"{request.method} {request.path}")

    def _error(self, code: int, reason: str, message: str) -> web.Response:
        return web.json_response(_status(code, reason, message), status=code)

    def _list(self, request: web.Request, plural: str, ns: str) -> web.Response:
        items = self.list(plural, ns, request.query.get("labelSelector"))
        _, kind = KINDS[plural]
        return web.json_response(
            {
                "kind": f"{kind}List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    async def _scale(self, request: web.Request, ns: str, name: str) -> web.Response:
        dep = self.get("deployments", ns, name)
        if dep is None:
            return self._error(404, "NotFound", f'deployments.apps "{name}" not found')
        if request.method in ("PATCH", "PUT"):
            body = await request.json()
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                return self._error(422, "Invalid", "spec.replicas must be a non-negative integer")
            self.scale_patches.append((asyncio.get_running_loop().time(), name, replicas))
            dep = copy.deepcopy(dep)
            dep["spec"]["replicas"] = replicas
            dep = self.put("deployments", dep)
        elif request.method != "GET":
            return self._error(405, "MethodNotAllowed", request.method)
        return web.json_response(
            {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "resourceVersion": dep["metadata"]["resourceVersion"],
                },
                "spec": {"replicas": dep["spec"]["replicas"]},
                "status": {
                    "replicas": dep.get("status", {}).get("replicas", 0),
                    "selector": ",".join(
                        f"{k}={v}" for k, v in dep["spec"]["selector"]["matchLabels"].items()
                    ),
                },
            }
        )

    async def _watch(self, request: web.Request, plural: str, ns: str) -> web.StreamResponse:
        q = request.query
        selector = q.get("labelSelector")
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout = float(q.get("timeoutSeconds") or 1800)
        since = q.get("resourceVersion")
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        await resp.prepare(request)

        async def send(kind: str, obj: Obj) -> None:
            await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        w = _Watcher(plural, ns, selector)
        # What came before and what comes after are split in one synchronous step: none lost or doubled.
        if since in (None, "", "0"):
            backlog = [("ADDED", copy.deepcopy(o)) for o in self.list(plural, ns, selector)]
        elif int(since) < self.compacted:
            await send(
                "ERROR", _status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
            )
            return resp
        else:
            backlog = [
                (kind, o)
                for rv, p, n, kind, o in self.history
                if rv > int(since) and p == plural and n == ns and _matches(o, selector)
            ]
        self.watchers.add(w)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            for kind, o in backlog:
                await send(kind, o)
            while self.up:
                left = end - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(w.queue.get(), min(left, self.bookmark_interval))
                except TimeoutError:
                    if bookmarks:
                        _, kind = KINDS[plural]
                        await send(
                            "BOOKMARK",
                            {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)}},
                        )
                    continue
                if item is None:
                    break
                await send(*item)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.discard(w)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp
