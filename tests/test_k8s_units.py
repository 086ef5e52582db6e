"""Kubernetes pieces without processes: the ring that replicas agree on, pod problems, the Lease, config."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable

import pytest

from fleetgate.config import KubernetesConfig, PoolConfig
from fleetgate.config.problems import ConfigError
from fleetgate.fleet.kube import Api, connect
from fleetgate.routing.ring import HashRing
from fleetgate.scaling.kubernetes import pod_problem
from fleetgate.scaling.leader import LeaseElector
from tests.k8s_fake import FakeKube


async def until(cond: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_ring_owners_agree_spread_move_little_and_respect_the_bound() -> None:
    names = [f"pod-{i}" for i in range(4)]
    idle = dict.fromkeys(names, 0)
    keys = [(3 << 32) | k * 2654435761 % (1 << 32) for k in range(2000)]
    # Two replicas (two rings, built separately) send every prefix to the same pod.
    a, b = HashRing(), HashRing()
    owners = [a.owner(k, idle, 1.25) for k in keys]
    assert owners == [b.owner(k, dict(reversed(list(idle.items()))), 1.25) for k in keys]
    shares = collections.Counter(owners)
    assert set(shares) == set(names) and min(shares.values()) > 2000 / 4 * 0.6
    # A pod leaves: only its keys move.
    fewer = {n: 0 for n in names[:3]}
    moved = [o for k, o in zip(keys, owners, strict=True) if a.owner(k, fewer, 1.25) != o]
    assert set(moved) == {"pod-3"}
    # At the bound the next pod on the ring takes it, the same one from every replica.
    k = keys[0]
    first = owners[0]
    assert first is not None
    busy = {**idle, first: 10}
    spill = a.owner(k, busy, 1.25)
    assert spill not in (None, first) and spill == b.owner(k, busy, 1.25)


def test_pod_problems_name_the_reason() -> None:
    pending = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    }
    assert pod_problem(pending) == (
        "Pending: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    )
    crash = {
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 137}},
                }
            ],
        }
    }
    assert pod_problem(crash) == "CrashLoopBackOff (4 restarts): last exit code 137"
    starting = {
        "status": {
            "phase": "Running",
            "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}],
        }
    }
    assert pod_problem(starting) is None


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeKube, Api]]:
    k = FakeKube()
    await k.start()
    a = await connect(KubernetesConfig(api_url=k.url, request_timeout=2))
    yield k, a
    await a.close()
    await k.stop()


async def test_one_lease_holder_and_a_takeover_after_a_silent_death(api: tuple[FakeKube, Api]) -> None:
    kube, client = api
    one = LeaseElector(client, "lead", "default", "one", duration=1.0, renew_interval=0.1)
    two = LeaseElector(client, "lead", "default", "two", duration=1.0, renew_interval=0.1)
    one.start()
    await until(lambda: one.is_leader, "one leads")
    two.start()
    await until(lambda: two.holder == "one", "two sees the holder")
    assert not two.is_leader
    # one dies without a word (its task ends, the Lease is not handed back).
    assert one._task is not None
    one._task.cancel()
    t0 = time.monotonic()
    await until(lambda: two.is_leader, "two takes over", 5)
    assert time.monotonic() - t0 >= 0.9  # not before the lease ran out
    lease = kube.get("leases", "default", "lead")
    assert lease is not None and lease["spec"]["holderIdentity"] == "two"
    assert lease["spec"]["leaseTransitions"] == 1
    # A graceful stop hands it back at once.
    await two.stop()
    lease = kube.get("leases", "default", "lead")
    assert lease is not None and lease["spec"]["holderIdentity"] is None


def test_config_rules_for_kubernetes_pools() -> None:
    ok = PoolConfig.model_validate(
        {
            "name": "q",
            "discovery": {"kubernetes": {"service": "vllm", "kv_events_port": 5557}},
            "workers": {
                "provider": "kubernetes",
                "deployment": "vllm",
                "served_model_name": "m",
                "max_workers": 4,
            },
        }
    )
    assert ok.model_map() == {"m": "m"} and ok.workers_namespace == "default"
    bad = [
        {"name": "q", "workers": {"provider": "kubernetes", "deployment": "vllm", "served_model_name": "m"}},
        {"name": "q", "discovery": {"kubernetes": {"service": "vllm", "selector": {"app": "x"}}}},
        {"name": "q", "discovery": {"kubernetes": {"selector": {"app": "x"}}}},
        {"name": "q", "discovery": {"kubernetes": {"service": "vllm"}}, "endpoints": ["http://a:1"]},
        {"name": "q", "workers": {"provider": "local", "model": "m"}},
    ]
    for data in bad:
        with pytest.raises((ConfigError, ValueError)):
            PoolConfig.model_validate(data)


def test_forgotten_endpoints_free_their_bits_for_new_ones() -> None:
    from fleetgate.fleet.prefix_index import ApproxIndex, PreciseIndex

    approx, precise = ApproxIndex(100), PreciseIndex()
    approx.record("keep", [1, 2])
    for i in range(1000):  # a thousand pods come and go
        name = f"pod-{i}"
        approx.record(name, [1, 2, 3])
        assert approx.match([1, 2, 3], ["keep", name]) == [2, 3]
        approx.forget(name)
        precise.forget(name)
        precise.clear(name)  # the KV-event subscriber clears after discovery forgot: no bit comes back
        assert approx.match([1, 2, 3], ["keep"]) == [2]
    assert max(approx.holders.values()).bit_length() <= 2
    assert approx.holders == {1: 1, 2: 1} and not precise._bits
