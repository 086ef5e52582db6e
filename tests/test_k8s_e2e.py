"""End to end on the fake cluster: requests through `fleetgate gateway` processes to `fleetgate sim` pods that
the fake kubelet runs, the Deployment scaled through /scale, pods found through EndpointSlices."""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory, GatewayProcess, until
from tests.k8s_kubelet import Cluster

MODEL = "sim-model"


def fleet(
    api: str, *, min_workers: int = 0, max_workers: int = 3, idle_timeout: float = 300, sleep: bool = False
) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
kubernetes:
  api_url: {api}
  retry_max: 0.3
  request_timeout: 3
  leader_election: {{lease_duration: 2, renew_interval: 0.3}}
pools:
  - name: qwen
    discovery: {{kubernetes: {{service: vllm}}}}
    workers:
      provider: kubernetes
      deployment: vllm
      served_model_name: {MODEL}
      min_workers: {min_workers}
      max_workers: {max_workers}
      idle_timeout: {idle_timeout}
      scaling: {{rule: concurrency, target: 2, interval: 0.2}}
      stabilization_window: 1.5
      drain_deadline: 60
      max_hold: 60
      sleep: {str(sleep).lower()}
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, ("--model-name", MODEL, "--time-scale", "1"))
    c.call(lambda: c.kube.add_deployment("vllm", {"app": "vllm"}, replicas=0, port=c.pod_port))
    c.call(lambda: c.kube.add_service("vllm", {"app": "vllm"}, c.pod_port))
    yield c
    c.close()


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0, timeout=120)


def stream(gw: GatewayProcess, max_tokens: int, prompt: str = "hello") -> tuple[int, str | None]:
    """Chunks with content and the finish reason; raises if the stream ends in an error."""
    chunks, finish = 0, None
    s = client(gw).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    for c in s:
        if c.choices and c.choices[0].delta.content:
            chunks += 1
        if c.choices and c.choices[0].finish_reason:
            finish = c.choices[0].finish_reason
    return chunks, finish


def admin(gw: GatewayProcess) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{gw.admin}/admin/fleet", timeout=5).json()["pools"]["qwen"]
    return data


def test_scale_from_zero_up_under_load_and_drain_down_without_dropping_streams(
    cluster: Cluster, gateway_factory: GatewayFactory
) -> None:
    gw = gateway_factory(fleet(cluster.kube.url))
    assert cluster.replicas("vllm") == 0
    # 0 -> 1: the request is held while the pod starts, then answered.
    chunks, finish = stream(gw, 8)
    assert (chunks, finish) == (8, "length")
    patches = cluster.call(lambda: list(cluster.kube.scale_patches))
    assert patches[0][1:] == ("vllm", 1)
    assert admin(gw)["discovery"]["api"]["connected"] is True

    # 1 -> 3 under load: six streams, two per worker. Then three long streams join; when the first six
    # end the policy wants 2 workers, so a pod is drained while its long stream runs, marked for deletion,
    # and removed once the stream is over. Nothing is cut.
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        load = [pool.submit(stream, gw, 1000) for _ in range(6)]
        until(lambda: len(cluster.pods(ready=True)) == 3, "three pods ready", 30)
        until(
            lambda: sum(e["routable"] or e["in_flight"] > 0 for e in admin(gw)["endpoints"]) == 3,
            "three endpoints",
            10,
        )
        long = [pool.submit(stream, gw, 1500, f"long {i}") for i in range(3)]
        assert [f.result(120) for f in load] == [(1000, "length")] * 6
        # The ReplicaSet's choice is recorded as it deletes (a draining state may last only a moment).
        until(lambda: bool(cluster.call(lambda: cluster.kube.deleted_pods)), "a pod drained and deleted", 60)
        drained = cluster.call(lambda: cluster.kube.deleted_pods[0]["metadata"]["name"])
        assert [f.result(120) for f in long] == [(1500, "length")] * 3
    assert max(r for _, _, r in cluster.call(lambda: list(cluster.kube.scale_patches))) == 3
    deleted = next(
        p for p in cluster.call(lambda: cluster.kube.deleted_pods) if p["metadata"]["name"] == drained
    )
    notes = deleted["metadata"]["annotations"]
    assert notes["controller.kubernetes.io/pod-deletion-cost"] == "-2147483647"
    assert notes["fleetgate.io/draining"] == "true"
    until(lambda: drained not in [e["name"] for e in admin(gw)["endpoints"]], "the drained pod forgotten", 30)
    assert cluster.replicas("vllm") < 3


def test_pod_killed_mid_stream_and_api_server_restarted_mid_watch(
    cluster: Cluster, gateway_factory: GatewayFactory
) -> None:
    cluster.call(lambda: cluster.kube.set_replicas("vllm", 2))
    until(lambda: len(cluster.pods(ready=True)) == 2, "two pods ready", 30)
    gw = gateway_factory(fleet(cluster.kube.url, min_workers=2))
    until(lambda: sum(e["routable"] for e in admin(gw)["endpoints"]) == 2, "two endpoints", 10)

    # A pod dies under a stream: the client hears an error (not a hang), the pod is forgotten, the
    # ReplicaSet replaces it and requests go on.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        f = pool.submit(stream, gw, 3000)
        until(lambda: any(e["in_flight"] for e in admin(gw)["endpoints"]), "the stream under way", 20)
        victim = next(e["name"] for e in admin(gw)["endpoints"] if e["in_flight"])
        series = f'fleetgate_endpoint_routable{{endpoint="{victim}"'
        assert series in httpx.get(f"{gw.admin}/metrics").text
        cluster.run(cluster.kubelet.kill(victim))
        with pytest.raises(openai.APIError):
            f.result(60)
    until(lambda: victim not in [e["name"] for e in admin(gw)["endpoints"]], "the dead pod forgotten", 10)
    assert series not in httpx.get(f"{gw.admin}/metrics").text  # its series go with it
    until(lambda: len(cluster.pods(ready=True)) == 2, "a replacement pod", 30)
    assert stream(gw, 5) == (5, "length")

    # The API server goes away: the gateway keeps serving with what it knew and says so.
    before = {e["name"] for e in admin(gw)["endpoints"]}
    cluster.run(cluster.kube.stop())
    until(lambda: admin(gw)["discovery"]["api"]["connected"] is False, "watch down", 10)
    assert stream(gw, 5) == (5, "length")
    metrics = httpx.get(f"{gw.admin}/metrics").text
    assert 'fleetgate_discovery_connected{pool="qwen"} 0.0' in metrics
    # Meanwhile a pod is replaced and history compacted: after the restart only a relist can tell.
    gone = sorted(before)[0]
    cluster.run(cluster.kubelet.kill(gone))
    until(lambda: len(cluster.pods(ready=True)) == 2, "another replacement", 30)
    cluster.call(cluster.kube.compact)
    cluster.run(cluster.kube.start(cluster.kube.port))
    until(lambda: admin(gw)["discovery"]["api"]["connected"] is True, "watch back", 15)
    now = {p["metadata"]["name"] for p in cluster.pods(ready=True)}
    until(lambda: {e["name"] for e in admin(gw)["endpoints"]} == now, "endpoints relisted", 15)
    assert admin(gw)["discovery"]["api"]["relists"] >= 1
    assert stream(gw, 5) == (5, "length")


def test_unschedulable_and_crash_looping_pods_answer_requests_with_the_reason(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    c = Cluster(tmp_path, gpus=0)
    try:
        c.call(lambda: c.kube.add_deployment("vllm", {"app": "vllm"}, replicas=0, port=c.pod_port))
        c.call(lambda: c.kube.add_service("vllm", {"app": "vllm"}, c.pod_port))
        gw = gateway_factory(fleet(c.kube.url))
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            client(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 503
        assert "Unschedulable" in err.value.message and "nvidia.com/gpu" in err.value.message
        assert time.monotonic() - t0 < 60  # answered, not held to max_hold
        view = admin(gw)
        assert "Unschedulable" in (view["blocked"] or "")
        assert any("Unschedulable" in (w["last_error"] or "") for w in view["workers"])
        out = subprocess.run(
            [sys.executable, "-m", "fleetgate", "status", "--admin", gw.admin],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        ).stdout
        assert "cannot start a worker" in out and "Unschedulable" in out
        # A GPU frees up, but the container crash-loops: the next request hears that instead.
        c.kubelet.crash = True
        c.call(lambda: setattr(c.kube, "gpus", None))
        c.call(lambda: c.kube._schedule("default"))
        until(lambda: "CrashLoopBackOff" in (admin(gw)["blocked"] or ""), "crash-looping reported", 10)
        with pytest.raises(openai.APIStatusError) as err:
            client(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 503 and "CrashLoopBackOff (3 restarts)" in err.value.message
    finally:
        c.close()


def test_two_gateway_replicas_one_scales_and_the_other_takes_over(
    cluster: Cluster, gateway_factory: GatewayFactory
) -> None:
    # Replicas idle for 1 s scale to zero: only what the follower publishes keeps the leader from it.
    a = gateway_factory(fleet(cluster.kube.url, idle_timeout=1))
    b = gateway_factory(fleet(cluster.kube.url, idle_timeout=1))
    until(lambda: sum(admin(g)["scaling"]["leader"] for g in (a, b)) == 1, "one leader", 15)
    leader, follower = (a, b) if admin(a)["scaling"]["leader"] else (b, a)
    # A request held by the follower wakes the pool from zero, and its long stream (about 5 s) is not cut
    # by the leader scaling back to zero: the leader counts the follower's streams.
    assert stream(follower, 1000) == (1000, "length")
    patches = cluster.call(lambda: [r for _, _, r in cluster.kube.scale_patches])
    assert patches[0] == 1 and 0 not in patches
    until(lambda: cluster.replicas("vllm") == 0, "idle again: back to zero", 20)
    # The leader dies without handing the Lease back; the follower takes over within the lease duration.
    holder = cluster.call(lambda: cluster.kube.get("leases", "default", "fleetgate-leader"))["spec"]  # type: ignore[index]
    leader.stop(signal.SIGKILL)
    until(lambda: admin(follower)["scaling"]["leader"] is True, "the follower leads", 10)
    lease = cluster.call(lambda: cluster.kube.get("leases", "default", "fleetgate-leader"))["spec"]  # type: ignore[index]
    assert lease["holderIdentity"] != holder["holderIdentity"]
    assert lease["leaseTransitions"] == holder["leaseTransitions"] + 1
    # And it scales: load on it brings a second pod.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: stream(follower, 200), range(4))) == [(200, "length")] * 4
    assert max(r for _, _, r in cluster.call(lambda: list(cluster.kube.scale_patches))) >= 2


def test_idle_pod_sleeps_instead_of_scaling_down_and_a_request_wakes_it(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    # The pods run with vLLM's sleep mode and its dev-mode gate (from the pod spec's env, as the chart sets).
    c = Cluster(tmp_path, ("--model-name", MODEL, "--time-scale", "1", "--enable-sleep-mode"))
    try:

        def deployment() -> None:
            c.kube.add_deployment("vllm", {"app": "vllm"}, replicas=0, port=c.pod_port)
            dep = copy.deepcopy(c.kube.get("deployments", "default", "vllm"))
            assert dep is not None
            env = [{"name": "VLLM_SERVER_DEV_MODE", "value": "1"}]
            dep["spec"]["template"]["spec"]["containers"][0]["env"] = env
            c.kube.put("deployments", dep)
            c.kube.add_service("vllm", {"app": "vllm"}, c.pod_port)

        c.call(deployment)
        gw = gateway_factory(fleet(c.kube.url, max_workers=1, idle_timeout=1, sleep=True))
        assert stream(gw, 5) == (5, "length")  # 0 -> 1: a pod started for the held request
        (pod,) = c.pods()
        name = pod["metadata"]["name"]
        at = f"http://{c.kubelet.ips[name]}:{c.pod_port}"

        def workers() -> list[tuple[str, str, int]]:
            return [(w["id"], w["state"], w["wakes"]) for w in admin(gw)["workers"]]

        # Idle: the pod is put to sleep through its own address, not removed: the Deployment stays at 1.
        until(lambda: workers() == [(name, "sleeping", 0)], "the idle pod asleep", 30)
        assert httpx.get(f"{at}/is_sleeping", timeout=5).json() == {"is_sleeping": True}
        assert c.replicas("vllm") == 1 and [p["metadata"]["name"] for p in c.pods()] == [name]
        assert [r for _, _, r in c.call(lambda: list(c.kube.scale_patches))] == [1]
        (ep,) = admin(gw)["endpoints"]
        assert ep["name"] == name and ep["routable"] is False  # asleep: no request is sent there

        # A request wakes the same pod (POST /wake_up) and is answered there; still no /scale patch.
        assert stream(gw, 5) == (5, "length")
        assert workers()[0][::2] == (name, 1)
        assert [r for _, _, r in c.call(lambda: list(c.kube.scale_patches))] == [1]
        assert [p["metadata"]["name"] for p in c.pods()] == [name]
        metrics = httpx.get(f"{gw.admin}/metrics", timeout=5).text
        assert 'fleetgate_worker_wakeups_total{pool="qwen"} 1.0' in metrics
    finally:
        c.close()


def test_requests_under_endpoint_churn_all_succeed_and_none_is_sent_to_an_unready_pod(
    cluster: Cluster, gateway_factory: GatewayFactory
) -> None:
    # benchmarks/k8s_churn.py in small: readiness flapping on every pod and pods replaced (terminating at
    # once, SIGTERM without a preStop) while requests stream through the gateway.
    cluster.call(lambda: cluster.kube.set_replicas("vllm", 3))
    until(lambda: len(cluster.pods(ready=True)) == 3, "three pods ready", 30)
    states: dict[str, list[tuple[float, bool]]] = {}  # pod -> [(loop time, ready in the slice)]

    def seen(plural: str, kind: str, obj: dict[str, Any]) -> None:
        if plural == "endpointslices":
            now = time.monotonic()  # the fake's loop clock is CLOCK_MONOTONIC too
            for ep in obj.get("endpoints") or []:
                states.setdefault(ep["targetRef"]["name"], []).append((now, ep["conditions"]["ready"]))

    cluster.call(lambda: cluster.kube.listeners.append(seen))
    gw = gateway_factory(f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
kubernetes: {{api_url: {cluster.kube.url}, retry_max: 0.3}}
pools:
  - name: qwen
    models: [{MODEL}]
    discovery: {{kubernetes: {{service: vllm}}}}
    routing: {{debug_headers: true}}
""")
    until(lambda: sum(e["routable"] for e in admin(gw)["endpoints"]) == 3, "three endpoints", 10)
    stop = threading.Event()
    rng = random.Random(3)

    def flip(name: str, ready: bool) -> None:
        pod = copy.deepcopy(cluster.kube.get("pods", "default", name))
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        conds = [c for c in pod["status"]["conditions"] if c["type"] != "Ready"]
        pod["status"]["conditions"] = [*conds, {"type": "Ready", "status": "True" if ready else "False"}]
        cluster.kube.put("pods", pod)

    def churn() -> None:
        flips = 0
        flipped: set[str] = set()  # only pods this test turned unready come back (not ones still starting)
        while not stop.is_set():
            ready = [p["metadata"]["name"] for p in cluster.pods(ready=True)]
            down = sorted(flipped & {p["metadata"]["name"] for p in cluster.pods(ready=False)})
            if flips % 25 == 24 and len(ready) >= 2:
                victim = rng.choice(ready)
                cluster.call(functools.partial(cluster.kube.delete_pod, "default", victim))
            elif down and (len(ready) <= 1 or rng.random() < 0.5):
                up = rng.choice(down)
                flipped.discard(up)
                cluster.call(functools.partial(flip, up, True))
            elif len(ready) >= 2:
                off = rng.choice(ready)
                flipped.add(off)
                cluster.call(functools.partial(flip, off, False))
            flips += 1
            stop.wait(0.03)

    def one(i: int) -> tuple[float, float, str, str | None]:
        """(sent, response head, endpoint, what went wrong)"""
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 8}
        body |= {"stream": i % 2 == 0, "ignore_eos": True}
        sent = time.monotonic()
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=60) as r:
            head = time.monotonic()
            text = r.read().decode()
        ok = r.status_code == 200 and (text.rstrip().endswith("data: [DONE]") or i % 2 == 1)
        ok = ok and '"error"' not in text
        return (
            sent,
            head,
            r.headers.get("x-fleetgate-endpoint", ""),
            None if ok else f"{r.status_code} {text}",
        )

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(240)))
    finally:
        stop.set()
        churner.join(10)
    assert [r[3] for r in results if r[3]] == []
    # The endpoints did churn meanwhile: readiness flipped many times, pods were replaced.
    assert sum(len(v) for v in states.values()) >= 50 and len(states) > 3

    def unready_throughout(pod: str, start: float, end: float) -> bool:
        hist = states.get(pod, [])
        before = [ready for t, ready in hist if t <= start][-1:]
        during = [ready for t, ready in hist if start < t <= end]
        return not any(before + during) and bool(before)

    assert [r for r in results if unready_throughout(r[2], r[0], r[1])] == []


def test_a_pod_removed_from_the_api_mid_stream_finishes_its_stream_and_is_forgotten(
    cluster: Cluster, gateway_factory: GatewayFactory
) -> None:
    # A force deletion (grace period 0) or a node controller's cleanup: the pod leaves every slice at once
    # while its process still runs. Its endpoint goes (no new requests, its indexes dropped); the stream
    # already there keeps its connection and finishes.
    cluster.call(lambda: cluster.kube.set_replicas("vllm", 2))
    until(lambda: len(cluster.pods(ready=True)) == 2, "two pods ready", 30)
    gw = gateway_factory(fleet(cluster.kube.url, min_workers=2, max_workers=2))
    until(lambda: sum(e["routable"] for e in admin(gw)["endpoints"]) == 2, "two endpoints", 10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        f = pool.submit(stream, gw, 600)
        until(lambda: any(e["in_flight"] for e in admin(gw)["endpoints"]), "the stream under way", 20)
        victim = next(e["name"] for e in admin(gw)["endpoints"] if e["in_flight"])
        cluster.call(lambda: cluster.kube.remove("pods", "default", victim))
        until(lambda: victim not in [e["name"] for e in admin(gw)["endpoints"]], "the pod forgotten", 10)
        assert not f.done()  # still streaming from a pod the gateway no longer lists
        assert f.result(60) == (600, "length")
    assert stream(gw, 5) == (5, "length")
