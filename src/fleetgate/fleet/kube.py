"""The Kubernetes API as fleetgate uses it: one client, and list-then-watch loops that survive what real API
servers do.

The client is kubernetes_asyncio (the `[kubernetes]` extra): async on aiohttp like the relay, generated from
the API's own spec (EndpointSlices, Deployments' /scale, Leases, Pods and Events are all there), and its
watch asks for bookmarks and reports a 410 Gone as an exception, so the relist stays in our hands.

`ListWatch` keeps a map of objects current: a list gives the objects and a resourceVersion; a watch from
that version brings changes (and bookmarks, which only move the version on). A watch the server ends is
renewed from the last version; a 410 Gone (the version was compacted away) means a fresh list, diffed
against what we had; a dropped connection or a refused one keeps the last known objects and retries with
backoff, saying since when it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from fleetgate.config import KubernetesConfig

__all__ = ["Api", "KubeUnavailable", "ListWatch", "WatchHealth", "call_json", "connect", "obj_key"]

log = logging.getLogger("fleetgate.kubernetes")

Obj = dict[str, Any]  # an object as the API sends it (camelCase JSON)
# First pause after a failed list or watch; doubles up to KubernetesConfig.retry_max.
RETRY_MIN = 0.1


class KubeUnavailable(RuntimeError):
    """The [kubernetes] extra is not installed, or no cluster configuration was found."""


def obj_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


async def call_json(call: Any) -> dict[str, Any]:
    """Await a kubernetes_asyncio call made with `_preload_content=False` (the raw JSON, no model objects:
    cheaper, and what the API sent); a status other than 2xx raises ApiException as a preloaded call would."""
    from kubernetes_asyncio.client.exceptions import ApiException

    resp: aiohttp.ClientResponse = await call
    try:
        if not 200 <= resp.status <= 299:
            text = await resp.text()
            raise ApiException(status=resp.status, reason=text[:500] or resp.reason)
        data: dict[str, Any] = await resp.json(content_type=None)
    finally:
        resp.release()
    return data


@dataclass
class Api:
    """The typed API groups fleetgate calls, over one connection pool."""

    client: Any  # kubernetes_asyncio.client.ApiClient
    core: Any  # CoreV1Api: pods, events
    apps: Any  # AppsV1Api: deployments and their /scale
    discovery: Any  # DiscoveryV1Api: endpointslices
    coordination: Any  # CoordinationV1Api: leases
    request_timeout: float

    async def close(self) -> None:
        await self.client.close()


async def connect(cfg: KubernetesConfig) -> Api:
    """A client for the configured API server: `api_url` as given (no credentials: a proxy or a test
    server), else the pod's service account, else KUBECONFIG / ~/.kube/config."""
    try:
        from kubernetes_asyncio import client, config
        from kubernetes_asyncio.config.config_exception import ConfigException
    except ImportError:
        raise KubeUnavailable(
            "Kubernetes discovery needs the kubernetes extra: pip install 'fleetgate[kubernetes]'"
        ) from None
    conf = client.Configuration()
    if cfg.api_url is not None:
        conf.host = cfg.api_url
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    else:
        try:
            await config.load_kube_config(client_configuration=conf)
        except (ConfigException, OSError) as e:
            raise KubeUnavailable(
                f"no Kubernetes configuration: not in a cluster, no kubeconfig ({e}); set kubernetes.api_url"
            ) from None
    api = client.ApiClient(configuration=conf)
    return Api(
        client=api,
        core=client.CoreV1Api(api),
        apps=client.AppsV1Api(api),
        discovery=client.DiscoveryV1Api(api),
        coordination=client.CoordinationV1Api(api),
        request_timeout=cfg.request_timeout,
    )


@dataclass
class WatchHealth:
    """What /admin/fleet and the metrics say about one watch."""

    connected: bool = False
    down_since: float | None = None  # monotonic time the API server stopped answering (None: answering)
    last_error: str | None = None
    relists: int = 0  # lists after the first (410 Gone)
    reconnects: int = 0  # watches renewed after a drop
    events: int = 0  # changes applied (bookmarks not counted)
    resource_version: str | None = None

    def snapshot(self, now: float) -> dict[str, object]:
        return {
            "connected": self.connected,
            "down_for_s": None if self.down_since is None else round(now - self.down_since, 3),
            "last_error": self.last_error,
            "relists": self.relists,
            "reconnects": self.reconnects,
            "events": self.events,
            "resource_version": self.resource_version,
        }


class ListWatch:
    """Keeps `objects` (key -> object) current for one list call; `on_change(objects)` after every list
    and every applied event. `list_fn` is a kubernetes_asyncio list method; `params` its filter arguments."""

    def __init__(
        self,
        what: str,
        list_fn: Callable[..., Any],
        params: Mapping[str, Any],
        on_change: Callable[[Mapping[str, Obj]], None],
        *,
        watch_timeout: int,
        request_timeout: float,
        retry_max: float,
        on_health: Callable[[WatchHealth], None] = lambda h: None,
    ) -> None:
        self.what = what
        self.list_fn = list_fn
        self.params = dict(params)
        self.on_change = on_change
        self.on_health = on_health
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.retry_max = retry_max
        self.objects: dict[str, Obj] = {}
        self.health = WatchHealth()
        self.synced = asyncio.Event()  # set once the first list has arrived
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"watch:{self.what}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        rv: str | None = None
        pause = RETRY_MIN
        while True:
            try:
                if rv is None:
                    rv = await self._list()
                rv = await self._watch(rv)
                pause = RETRY_MIN
            except ApiException as e:
                if e.status == 410:
                    # The version we hold was compacted away: only a fresh list says what changed.
                    log.info("%s: resourceVersion %s expired; listing again", self.what, rv)
                    rv = None
                    self.health.relists += 1
                    continue
                self._down(f"HTTP {e.status}: {e.reason}")
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                self._down(f"{type(e).__name__}: {e}")
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.retry_max)

    def _down(self, error: str) -> None:
        h = self.health
        if h.connected or h.down_since is None:
            log.warning(
                "%s: API server unreachable (%s); keeping %d known object(s)",
                self.what,
                error,
                len(self.objects),
            )
        h.connected = False
        h.last_error = error
        if h.down_since is None:
            h.down_since = time.monotonic()
        self.on_health(h)

    def _up(self) -> None:
        h = self.health
        if not h.connected:
            h.connected = True
            h.down_since = None
            self.on_health(h)

    async def _list(self) -> str:
        body = await call_json(
            self.list_fn(**self.params, _preload_content=False, _request_timeout=self.request_timeout)
        )
        items = body.get("items") or []
        fresh = {obj_key(o): o for o in items}
        self.objects = fresh
        rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self.health.resource_version = rv
        self._up()
        self.synced.set()
        self.on_change(self.objects)
        return rv

    async def _watch(self, rv: str) -> str:
        """One watch from `rv` until the server ends it; the version reached."""
        from kubernetes_asyncio import watch

        timeout = aiohttp.ClientTimeout(
            connect=self.request_timeout, sock_connect=self.request_timeout, sock_read=self.watch_timeout + 30
        )
        async with watch.Watch(return_type="object") as w:
            stream = w.stream(
                self.list_fn,
                **self.params,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                _request_timeout=timeout,
            )
            async for event in stream:
                self._up()
                raw: Obj = event["raw_object"]
                kind = event["type"]
                rv = str((raw.get("metadata") or {}).get("resourceVersion") or rv)
                self.health.resource_version = rv
                if kind == "BOOKMARK":
                    continue
                key = obj_key(raw)
                if kind == "DELETED":
                    self.objects.pop(key, None)
                else:  # ADDED, MODIFIED
                    self.objects[key] = raw
                self.health.events += 1
                self.on_change(self.objects)
        self.health.reconnects += 1
        return rv
