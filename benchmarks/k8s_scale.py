"""Kubernetes scaling, timed on the tests' fake cluster (tests/k8s_fake.py: a real HTTP API server; its
kubelet runs `fleetgate sim` pods on 127.0.0.N):

  1. a request at zero pods -> the Deployment's /scale patch (target < 100 ms)
  2. the pod's endpoint ready in its EndpointSlice -> the held request's first byte (target < 0.5 s)
  3. the gateway's CPU per EndpointSlice event (a pod flipping ready/not ready), against the same time idle

All clocks are CLOCK_MONOTONIC on one machine (asyncio's loop.time() in the fake, time.monotonic() here), so
times across the processes compare. Run: .venv/bin/python benchmarks/k8s_scale.py [--runs 3] [--events 1000]
"""

from __future__ import annotations

import argparse
import copy
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from tests.k8s_kubelet import Cluster  # noqa: E402

from procs import cpu_seconds, free_port, wait_http  # noqa: E402

MODEL = "sim-model"


def fleet(api: str, port: int, admin: int, workers: bool) -> str:
    scaled = f"""
    workers:
      provider: kubernetes
      deployment: vllm
      served_model_name: {MODEL}
      max_workers: 1
      idle_timeout: 0.5
      stabilization_window: 0.2
      scaling: {{interval: 0.2}}"""
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin}}}
kubernetes: {{api_url: {api}, retry_max: 0.3}}
pools:
  - name: qwen
    models: [{MODEL}]
    discovery: {{kubernetes: {{service: vllm}}}}{scaled if workers else ""}
"""


def start_gateway(tmp: Path, text: str, port: int, admin: int) -> subprocess.Popen[bytes]:
    path = tmp / f"fleet-{port}.yaml"
    path.write_text(text)
    log = (tmp / f"gateway-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetgate", "gateway", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def cold_starts(c: Cluster, tmp: Path, runs: int) -> tuple[list[float], list[float]]:
    port, admin = free_port(), free_port()
    gw = start_gateway(tmp, fleet(c.kube.url, port, admin, True), port, admin)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
    to_patch, to_byte = [], []
    try:
        for _ in range(runs):
            deadline = time.monotonic() + 60
            while c.replicas("vllm") or c.pods(live=False):  # back at zero, the last pod gone
                assert time.monotonic() < deadline, "the pool never went back to zero"
                time.sleep(0.05)
            patches = len(c.call(lambda: c.kube.scale_patches))
            c.call(c.kube.ready_at.clear)
            t0 = time.monotonic()
            s = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
            )
            first = None
            for _chunk in s:
                first = first or time.monotonic()
            patch_at = c.call(lambda: c.kube.scale_patches[patches][0])  # noqa: B023
            ready_at = c.call(lambda: min(c.kube.ready_at.values()))
            assert first is not None
            to_patch.append(patch_at - t0)
            to_byte.append(first - ready_at)
    finally:
        gw.send_signal(signal.SIGINT)
        gw.wait(30)
    return to_patch, to_byte


def slice_cpu(c: Cluster, tmp: Path, events: int) -> tuple[float, float, int]:
    """CPU seconds of the gateway per applied EndpointSlice event, and its idle CPU over as long."""
    c.call(lambda: c.kube.set_replicas("vllm", 2))
    deadline = time.monotonic() + 60
    while len(c.pods(ready=True)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    port, admin = free_port(), free_port()
    gw = start_gateway(tmp, fleet(c.kube.url, port, admin, False), port, admin)
    try:
        time.sleep(2)  # settle: imports and the first list are not what is measured
        victim = c.pods(ready=True)[0]["metadata"]["name"]

        def flip(ready: bool) -> None:
            pod = copy.deepcopy(c.kube.get("pods", "default", victim))
            assert pod is not None
            pod["status"]["conditions"] = [x for x in pod["status"]["conditions"] if x["type"] != "Ready"]
            pod["status"]["conditions"].append({"type": "Ready", "status": "True" if ready else "False"})
            c.kube.put("pods", pod)

        def applied() -> int:
            return int(
                httpx.get(f"http://127.0.0.1:{admin}/admin/fleet").json()["pools"]["qwen"]["discovery"][
                    "api"
                ]["events"]
            )

        before_events = applied()
        cpu0, t0 = cpu_seconds(gw.pid), time.monotonic()
        for i in range(events):
            c.call(lambda i=i: flip(i % 2 == 1))  # type: ignore[misc]
        while applied() - before_events < events:
            time.sleep(0.05)
        busy, wall = cpu_seconds(gw.pid) - cpu0, time.monotonic() - t0
        cpu1 = cpu_seconds(gw.pid)
        time.sleep(wall)
        idle = cpu_seconds(gw.pid) - cpu1
        return busy, idle, applied() - before_events
    finally:
        gw.send_signal(signal.SIGINT)
        gw.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--events", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        c = Cluster(tmp, ("--model-name", MODEL, "--time-scale", "1"))
        try:
            c.call(lambda: c.kube.add_deployment("vllm", {"app": "vllm"}, replicas=0, port=c.pod_port))
            c.call(lambda: c.kube.add_service("vllm", {"app": "vllm"}, c.pod_port))
            to_patch, to_byte = cold_starts(c, tmp, args.runs)
            busy, idle, n = slice_cpu(c, tmp, args.events)
        finally:
            c.close()

    def ms(xs: list[float]) -> str:
        return ", ".join(f"{x * 1000:.1f}" for x in xs)

    print(
        f"request at zero pods -> /scale patch: median {statistics.median(to_patch) * 1000:.1f} ms "
        f"(runs: {ms(to_patch)}; target < 100 ms)"
    )
    print(
        f"endpoint ready -> held request's first byte: median {statistics.median(to_byte) * 1000:.1f} ms "
        f"(runs: {ms(to_byte)}; target < 500 ms)"
    )
    print(
        f"EndpointSlice events applied: {n}; gateway CPU {busy:.3f} s busy, {idle:.3f} s idle as long: "
        f"{(busy - idle) / max(n, 1) * 1e6:.0f} us per event"
    )


if __name__ == "__main__":
    main()
