"""Kubernetes discovery against the fake API server (in-process, real HTTP through kubernetes_asyncio):
EndpointSlice conditions onto endpoints, bookmarks, 410 Gone and relist, the API server down and back."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable

import pytest

from fleetgate.config import KubernetesConfig, KubernetesDiscovery
from fleetgate.fleet.k8s_discovery import DiscoveryHooks, EndpointSource, addresses_from_slices
from fleetgate.fleet.kube import Api, connect
from fleetgate.fleet.prefix_index import ApproxIndex
from fleetgate.fleet.sessions import SessionTable
from fleetgate.fleet.state import Endpoint, PoolState
from tests.k8s_fake import FakeKube, Obj


async def until(cond: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def pod(name: str, ip: str, ready: bool = True, labels: dict[str, str] | None = None) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "default", "labels": labels or {"app": "vllm"}},
        "spec": {"containers": [{"name": "vllm", "ports": [{"name": "http", "containerPort": 8000}]}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    k = FakeKube(bookmark_interval=0.05)
    await k.start()
    k.add_service("vllm", {"app": "vllm"}, 8000)
    yield k
    await k.stop()


@pytest.fixture
async def api(kube: FakeKube) -> AsyncIterator[Api]:
    a = await connect(KubernetesConfig(api_url=kube.url, retry_max=0.2, request_timeout=2))
    yield a
    await a.close()


class Recorder:
    def __init__(self) -> None:
        self.added: list[str] = []
        self.removed: list[str] = []
        self.kicks = 0

    def hooks(self) -> DiscoveryHooks:
        def kick() -> None:
            self.kicks += 1

        return DiscoveryHooks(
            lambda e: self.added.append(e.name), lambda e: self.removed.append(e.name), kick
        )


def source(cfg: KubernetesDiscovery, rec: Recorder) -> tuple[EndpointSource, list[Endpoint], PoolState]:
    endpoints: list[Endpoint] = []
    state = PoolState("p", endpoints, ApproxIndex(1000), SessionTable(600))
    return EndpointSource("p", cfg, endpoints, state, rec.hooks(), models=frozenset({"m"})), endpoints, state


async def test_slices_become_endpoints_and_conditions_gate_routing(kube: FakeKube, api: Api) -> None:
    kube.put("pods", pod("a", "10.0.0.1"))
    rec = Recorder()
    src, endpoints, state = source(KubernetesDiscovery(service="vllm", kv_events_port=5557), rec)
    src.start(api, watch_timeout=30, retry_max=0.2)
    try:
        await until(lambda: len(endpoints) == 1, "the first endpoint")
        a = endpoints[0]
        assert (a.name, a.url, a.kv_events, a.models) == (
            "a",
            "http://10.0.0.1:8000",
            "tcp://10.0.0.1:5557",
            frozenset({"m"}),
        )
        assert a.routable(), "a ready endpoint is routable at once"
        # A pod that is not ready yet is not added; once ready it is.
        kube.put("pods", pod("b", "10.0.0.2", ready=False))
        await until(lambda: src.addresses.get("b") is not None, "b seen")
        assert [e.name for e in endpoints] == ["a"]
        b_pod = copy.deepcopy(kube.get("pods", "default", "b"))
        assert b_pod is not None
        b_pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        kube.put("pods", b_pod)
        await until(lambda: len(endpoints) == 2, "b ready")
        # Terminating: kept (its streams finish) but takes nothing new.
        state.approx.record("a", [1, 2, 3])
        kube.delete_pod("default", "a")
        await until(lambda: not a.enabled, "a terminating")
        assert a in endpoints and src.addresses["a"].terminating and src.addresses["a"].serving
        # Gone: forgotten with its prefix index.
        kube.remove("pods", "default", "a")
        await until(lambda: a not in endpoints, "a forgotten")
        assert state.approx.blocks("a") == 0
        assert rec.added == ["a", "b"] and rec.removed == ["a"] and rec.kicks > 0
        # Cordoned (the provider drains it): no new requests whatever the slice says.
        src.cordon("b")
        kube.put("pods", copy.deepcopy(kube.get("pods", "default", "b") or {}))
        await until(lambda: src.changes > 0 and not endpoints[0].enabled, "b cordoned")
    finally:
        await src.stop()


async def test_bookmarks_move_the_version_and_410_relists_what_changed_meanwhile(
    kube: FakeKube, api: Api
) -> None:
    kube.put("pods", pod("a", "10.0.0.1"))
    kube.put("pods", pod("b", "10.0.0.2"))
    rec = Recorder()
    src, endpoints, _ = source(KubernetesDiscovery(service="vllm"), rec)
    src.start(api, watch_timeout=30, retry_max=0.2)
    try:
        await until(lambda: len(endpoints) == 2, "both endpoints")
        # Changes the watch does not select still move the server's version; bookmarks carry it over.
        for i in range(3):
            kube.event(
                "default", kube.get("pods", "default", "a") or {}, "Pulled", f"image {i}", kind="Normal"
            )
        await until(lambda: src.health.resource_version == str(kube.rv), "a bookmark with the latest version")
        assert src.health.events == 0 or src.health.events < 5
        # The API server goes away: the last known endpoints keep serving, and the watch says it is down.
        await kube.stop()
        await until(lambda: not src.health.connected, "disconnected")
        assert src.health.down_since is not None and len(endpoints) == 2
        assert all(e.routable() for e in endpoints)
        # Meanwhile b disappears and history is compacted: only a relist can tell.
        kube.remove("pods", "default", "b")
        kube.compact()
        await kube.start(kube.port)
        await until(lambda: src.health.connected and [e.name for e in endpoints] == ["a"], "relisted", 15)
        assert src.health.relists >= 1 and src.health.down_since is None
        # And it keeps following changes after the relist.
        kube.put("pods", pod("c", "10.0.0.3"))
        await until(lambda: sorted(e.name for e in endpoints) == ["a", "c"], "c after the relist")
    finally:
        await src.stop()


async def test_selector_discovery_reads_pods_and_named_ports(kube: FakeKube, api: Api) -> None:
    kube.put("pods", pod("x", "10.0.1.1", labels={"app": "gaie"}))
    kube.put("pods", pod("y", "10.0.1.2", labels={"app": "other"}))
    rec = Recorder()
    src, endpoints, _ = source(KubernetesDiscovery(selector={"app": "gaie"}, target_port="http"), rec)
    src.start(api, watch_timeout=30, retry_max=0.2)
    try:
        await until(lambda: len(endpoints) == 1, "the selected pod")
        assert endpoints[0].url == "http://10.0.1.1:8000"
        kube.delete_pod("default", "x")
        await until(lambda: not endpoints[0].enabled, "terminating by deletionTimestamp")
    finally:
        await src.stop()


def test_slice_conditions_follow_the_api_rules() -> None:
    slices = [
        {
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8000}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "targetRef": {"name": "a"}},  # conditions absent: ready
                {
                    "addresses": ["10.0.0.2"],
                    "targetRef": {"name": "b"},
                    "conditions": {"ready": False, "serving": True, "terminating": True},
                },
                {"addresses": [], "targetRef": {"name": "c"}},
            ],
        },
        {"addressType": "FQDN", "ports": [{"port": 1}], "endpoints": [{"addresses": ["x.example"]}]},
    ]
    got = addresses_from_slices(slices, "http")
    assert sorted(got) == ["a", "b"]
    assert got["a"].ready and got["a"].port == 8000
    assert not got["b"].ready and got["b"].serving and got["b"].terminating
    assert addresses_from_slices(slices, 9000)["a"].port == 9000
    assert addresses_from_slices(slices, "grpc") == {}
