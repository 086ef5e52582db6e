"""A pool's endpoints from Kubernetes: the EndpointSlices of a Service, or the pods matching a selector.

Each pod is one endpoint, named after the pod, at `scheme://POD_IP:port` (its KV events, when configured,
at `tcp://POD_IP:kv_events_port`). What the API says maps onto routing like this:

  ready                      routable (as soon as the slice says so: Kubernetes' readiness probe is the
                             health check that counts; our own probes and scrapes start at once too)
  serving, terminating       no new requests; streams already there finish (the pod is shutting down)
  not ready, not terminating no new requests; kept, it may come back (a failing readiness probe)
  gone from every slice      forgotten: its monitor loops, KV-event socket and prefix indexes go with it

A pod the scaling provider is draining is *cordoned*: no new requests whatever its slice says.
While the API server cannot be reached the last known endpoints keep serving; `health` says since when.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetgate.config import KubernetesDiscovery
from fleetgate.fleet.kube import Api, ListWatch, Obj, WatchHealth
from fleetgate.fleet.state import Endpoint, PoolState

__all__ = ["DiscoveryHooks", "EndpointSource", "PodAddress", "addresses_from_pods", "addresses_from_slices"]

log = logging.getLogger("fleetgate.kubernetes")


@dataclass(frozen=True)
class PodAddress:
    pod: str
    ip: str
    port: int
    ready: bool
    serving: bool
    terminating: bool


def _slice_port(ports: Iterable[Mapping[str, Any]], target: int | str | None) -> int | None:
    for p in ports:
        if target is None or p.get("name") == target or p.get("port") == target:
            port = p.get("port")
            return int(port) if port is not None else None
    return None


def addresses_from_slices(slices: Iterable[Obj], target: int | str | None) -> dict[str, PodAddress]:
    """Pod name -> its address, from every slice of the Service (a pod is in one slice at a time, but a
    move between slices may show it twice for a moment: the ready copy wins)."""
    out: dict[str, PodAddress] = {}
    for s in slices:
        if s.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        port = _slice_port(s.get("ports") or [], target)
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            addrs = ep.get("addresses") or []
            if not addrs:
                continue
            ref = ep.get("targetRef") or {}
            name = str(ref.get("name") or addrs[0])
            cond = ep.get("conditions") or {}
            ready = cond.get("ready") is not False  # absent means ready (the API's rule)
            terminating = cond.get("terminating") is True
            serving = cond.get("serving", ready) is not False
            a = PodAddress(name, str(addrs[0]), port, ready and not terminating, serving, terminating)
            old = out.get(name)
            if old is None or (a.ready and not old.ready):
                out[name] = a
    return out


def _pod_port(pod: Obj, target: int | str | None) -> int | None:
    if isinstance(target, int):
        return target
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return int(p["containerPort"])
    return None


def addresses_from_pods(pods: Iterable[Obj], target: int | str | None) -> dict[str, PodAddress]:
    """Pod name -> its address, for pods matched by a selector: ready from the pod's Ready condition,
    terminating from its deletion timestamp (what the EndpointSlice controller would have said)."""
    out: dict[str, PodAddress] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        ip = status.get("podIP")
        port = _pod_port(pod, target)
        if not ip or port is None or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        terminating = meta.get("deletionTimestamp") is not None
        name = str(meta.get("name"))
        out[name] = PodAddress(name, str(ip), port, ready and not terminating, ready, terminating)
    return out


@dataclass
class DiscoveryHooks:
    """What the gateway does when an endpoint comes or goes (monitor, KV events, flow queue)."""

    added: Callable[[Endpoint], None]
    removed: Callable[[Endpoint], None]
    changed: Callable[[], None]  # routable endpoints may have changed: wake the flow queue


class EndpointSource:
    """Keeps one pool's endpoint list in step with Kubernetes."""

    def __init__(
        self,
        pool: str,
        cfg: KubernetesDiscovery,
        endpoints: list[Endpoint],
        state: PoolState,
        hooks: DiscoveryHooks,
        *,
        models: frozenset[str] = frozenset(),
        max_streams: int | None = None,
    ) -> None:
        self.pool = pool
        self.cfg = cfg
        self.endpoints = endpoints  # the pool's own list, shared with its route and state
        self.state = state
        self.hooks = hooks
        self.models = models
        self.max_streams = max_streams
        self.by_pod: dict[str, Endpoint] = {}
        self.addresses: dict[str, PodAddress] = {}
        self.cordoned: set[str] = set()
        self.watch: ListWatch | None = None
        self.changes = 0  # endpoint sets applied (one per slice event)
        self.listeners: list[Callable[[], None]] = []  # told after each applied change (the provider)

    @property
    def health(self) -> WatchHealth:
        return self.watch.health if self.watch is not None else WatchHealth()

    def start(self, api: Api, watch_timeout: int, retry_max: float) -> None:
        cfg = self.cfg
        service = cfg.service is not None
        list_fn = api.discovery.list_namespaced_endpoint_slice if service else api.core.list_namespaced_pod

        def build(objs: Mapping[str, Obj]) -> dict[str, PodAddress]:
            if service:
                return addresses_from_slices(objs.values(), cfg.target_port)
            return addresses_from_pods(objs.values(), cfg.target_port)

        self.watch = ListWatch(
            f"{self.pool}: {'endpointslices' if cfg.service else 'pods'} {cfg.label_selector()}",
            list_fn,
            {"namespace": cfg.namespace, "label_selector": cfg.label_selector()},
            lambda objs: self.apply(build(objs)),
            watch_timeout=watch_timeout,
            request_timeout=api.request_timeout,
            retry_max=retry_max,
        )
        self.watch.start()

    async def stop(self) -> None:
        if self.watch is not None:
            await self.watch.stop()

    def cordon(self, pod: str) -> None:
        """The provider is draining this pod: no new requests from now on."""
        self.cordoned.add(pod)
        e = self.by_pod.get(pod)
        if e is not None:
            e.enabled = False

    def uncordon(self, pod: str) -> None:
        self.cordoned.discard(pod)
        self.apply(self.addresses)

    def apply(self, addresses: Mapping[str, PodAddress]) -> None:
        """Make the endpoint list say what `addresses` says."""
        self.addresses = dict(addresses)
        self.changes += 1
        for name in [n for n in self.by_pod if n not in addresses]:
            self._remove(name)
        for name, a in addresses.items():
            url = f"{self.cfg.scheme}://{_host(a.ip)}:{a.port}"
            e = self.by_pod.get(name)
            if e is not None and e.url != url:  # the same name on a new address: another pod
                self._remove(name)
                e = None
            if e is None:
                if not a.ready:
                    continue  # nothing of ours runs there, and it takes nothing new
                e = self._add(name, a, url)
            e.enabled = a.ready and name not in self.cordoned
        self.cordoned &= set(addresses)
        for listener in self.listeners:
            listener()
        self.hooks.changed()

    def _add(self, name: str, a: PodAddress, url: str) -> Endpoint:
        kv = None if self.cfg.kv_events_port is None else f"tcp://{_host(a.ip)}:{self.cfg.kv_events_port}"
        e = Endpoint(name=name, url=url, pool=self.pool, kv_events=kv, max_streams=self.max_streams)
        e.models = self.models
        e.discovered_at = time.monotonic()
        e.probe_ok()  # Kubernetes' readiness probe passed: routable now, our own probes follow
        self.by_pod[name] = e
        self.endpoints.append(e)
        log.info("pool %s: endpoint %s at %s", self.pool, name, url)
        self.hooks.added(e)
        return e

    def _remove(self, name: str) -> None:
        e = self.by_pod.pop(name)
        with contextlib.suppress(ValueError):
            self.endpoints.remove(e)
        self.state.approx.forget(e.name)
        self.state.precise.forget(e.name)
        log.info("pool %s: endpoint %s gone", self.pool, name)
        self.hooks.removed(e)

    def snapshot(self, now: float) -> dict[str, object]:
        return {
            "source": "endpointslices" if self.cfg.service else "pods",
            "namespace": self.cfg.namespace,
            "selector": self.cfg.label_selector(),
            "api": self.health.snapshot(now),
            "pods": {
                n: {
                    "ip": a.ip,
                    "ready": a.ready,
                    "serving": a.serving,
                    "terminating": a.terminating,
                    "cordoned": n in self.cordoned,
                }
                for n, a in sorted(self.addresses.items())
            },
        }


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
