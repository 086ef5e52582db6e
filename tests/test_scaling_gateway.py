"""Pools of started workers through the real gateway: simulator workers as real processes, the real
`openai` SDK, held requests, scale to zero, sleep and wake, queue bounds, failed pools, and the one-command
entry points (`fleetgate serve`, `fleetgate up`) with their Ctrl-C cleanup."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory, GatewayProcess, alive, free_port, wait_ready
from tests.conftest import until as conftest_until

ROOT = Path(__file__).parent.parent
# 10 virtual seconds of vLLM startup log at 20x: the worker is ready about a second after it is spawned.
FAST = '["--startup-time", "10", "--time-scale", "20"]'


def fleet(workers: str, limits: str = "{}", keepalive: float = 10.0) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
keepalive_after: {keepalive}
pools:
  - name: sim
    limits: {limits}
    workers:
      engine: sim
      model: h200-llama-3.1-8b
      served_model_name: llama
      scaling: {{rule: queue_delay, target: 1, interval: 0.1}}
      stabilization_window: 0
      backoff_base: 0.2
      backoff_cap: 1
      stop_grace: 3
      {workers}
"""


# Worker starts and idle timeouts take seconds: a longer deadline than the shared default.
until = functools.partial(conftest_until, within=30.0)


def admin_pool(gw: GatewayProcess) -> dict[str, Any]:
    pool: dict[str, Any] = httpx.get(f"{gw.admin}/admin/fleet").json()["pools"]["sim"]
    return pool


def states(gw: GatewayProcess) -> list[str]:
    return [w["state"] for w in admin_pool(gw)["workers"]]


def metric(gw: GatewayProcess, name: str) -> float:
    for line in httpx.get(f"{gw.admin}/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0, timeout=60)


def chat(gw: GatewayProcess) -> str:
    r = client(gw).chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    return r.choices[0].message.content or ""


def test_cold_request_is_held_with_keepalives_then_served_and_idle_scales_to_zero(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(
        fleet(f"engine_args: {FAST}\n      min_workers: 0\n      idle_timeout: 1", keepalive=0.2)
    )
    assert states(gw) == []
    body = {
        "model": "llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert ": keep-alive" in lines
    assert lines[-1] == "data: [DONE]"
    assert not any("error" in line for line in lines)
    assert metric(gw, "fleetgate_held_requests_total") == 1
    assert metric(gw, "fleetgate_cold_starts_total") == 1
    # Idle for idle_timeout: the worker drains and stops; the next request starts one again.
    until(lambda: states(gw) == [], "scale to zero")
    assert metric(gw, 'fleetgate_workers{pool="sim",state="ready"}') == 0
    assert chat(gw)
    assert metric(gw, "fleetgate_cold_starts_total") == 2


def test_idle_worker_sleeps_and_a_request_wakes_it(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(
        fleet(f"engine_args: {FAST}\n      min_workers: 0\n      idle_timeout: 0.5\n      sleep: true")
    )
    assert chat(gw)
    until(lambda: states(gw) == ["sleeping"], "the idle worker asleep")
    pid = admin_pool(gw)["workers"][0]["pid"]
    assert chat(gw)
    (worker,) = admin_pool(gw)["workers"]
    assert (worker["pid"], worker["wakes"], worker["state"]) == (pid, 1, "ready")
    assert metric(gw, "fleetgate_worker_wakeups_total") == 1
    assert metric(gw, "fleetgate_cold_starts_total") == 1


def test_a_cold_start_longer_than_max_queue_wait_holds_the_request_until_the_worker_is_ready(
    gateway_factory: GatewayFactory,
) -> None:
    # 3 s of start-up against a 0.5 s queue bound: the request waits for the worker, it is not refused.
    slow = '["--startup-time", "60", "--time-scale", "20"]'
    gw = gateway_factory(fleet(f"engine_args: {slow}", limits="{max_queue_wait: 0.5}"))
    r = httpx.post(
        f"{gw.url}/v1/completions", json={"model": "llama", "prompt": "a", "max_tokens": 2}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert metric(gw, 'fleetgate_cold_starts_total{pool="sim"}') == 1


def test_queue_bounds_answer_503_with_retry_after(gateway_factory: GatewayFactory) -> None:
    # A worker that takes far longer to start than a request may be held.
    slow = '["--startup-time", "60"]'
    gw = gateway_factory(
        fleet(f"engine_args: {slow}\n      max_hold: 1.5", limits="{max_queue: 1, max_queue_wait: 1}")
    )
    held: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: held.append(
            httpx.post(f"{gw.url}/v1/completions", json={"model": "llama", "prompt": "a"}, timeout=30)
        )
    )
    first.start()
    until(lambda: admin_pool(gw)["queue"]["waiting"] == 1, "the first request held")
    full = httpx.post(f"{gw.url}/v1/completions", json={"model": "llama", "prompt": "b"}, timeout=30)
    first.join(30)
    for r in (full, held[0]):
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
    assert "queue is full" in full.json()["error"]["message"]
    message = held[0].json()["error"]["message"]
    assert "no worker of pool 'sim' ready: a cold start has taken" in message and "so far" in message


def test_failed_pool_answers_503_with_the_reason(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(fleet('engine_args: ["--no-such-flag"]\n      max_failures: 2'))
    with pytest.raises(openai.APIStatusError) as e:
        chat(gw)
    assert e.value.status_code == 503
    message = e.value.response.json()["error"]["message"]
    # A rejected flag fails the same way every time: the pool fails at the first start, with the reason.
    assert "the simulator cannot start: No such option: --no-such-flag" in message
    assert admin_pool(gw)["failure"]
    assert metric(gw, 'fleetgate_pool_failed{pool="sim"}') == 1


def test_a_pool_needing_more_gpus_than_the_machine_has_fails_at_once_with_the_reason(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the gateway inherits it: no GPU on this machine
    gw = gateway_factory(fleet("gpus_per_worker: 1"), ready=False)
    with pytest.raises(openai.APIStatusError) as e:
        chat(gw)
    assert e.value.status_code == 503
    assert "needs 1 GPU(s) and this machine has 0" in e.value.response.json()["error"]["message"]
    assert httpx.get(f"{gw.url}/ready").status_code == 503
    assert admin_pool(gw)["workers"] == []  # nothing was started, nothing retried


def _run_until_answer(cmd: list[str], port: int, admin_port: int, log: Path) -> None:
    """Start a one-command fleetgate, ask it through the SDK, Ctrl-C it: exit 0, port and workers gone."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, log)
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        model = sdk.models.list().data[0].id
        r = sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert r.choices[0].finish_reason in ("length", "stop")
        fleet_view = httpx.get(f"http://127.0.0.1:{admin_port}/admin/fleet").json()
        pids = [w["pid"] for p in fleet_view["pools"].values() for w in p["workers"]]
        assert pids and all(alive(p) for p in pids)
        proc.send_signal(2)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        assert not any(alive(p) for p in pids)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_one_liner_with_the_simulator(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "fleetgate", "serve", "h200-llama-3.1-8b", "--engine", "sim",
           "--served-model-name", "llama", "--host", "127.0.0.1", "--port", str(port),
           "--admin-port", str(admin_port), "--", "--startup-time", "10", "--time-scale", "20"]  # fmt: skip
    _run_until_answer(cmd, port, admin_port, tmp_path / "serve.log")


def test_up_runs_the_example_sim_fleet(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "fleetgate", "up", str(ROOT / "examples" / "sim-fleet.yaml"),
           "--port", str(port), "--admin-port", str(admin_port)]  # fmt: skip
    _run_until_answer(cmd, port, admin_port, tmp_path / "up.log")


def test_serve_the_embedded_demo_model(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "fleetgate", "serve", "demo", "--engine", "embedded", "--host", "127.0.0.1",
           "--port", str(port), "--admin-port", str(admin_port)]  # fmt: skip
    _run_until_answer(cmd, port, admin_port, tmp_path / "embedded.log")


def test_concurrency_rule_caps_streams_per_worker_and_cold_pools_hold() -> None:
    from fleetgate.admission.flow import FlowQueue
    from fleetgate.api.gateway import pool_spec
    from fleetgate.config import parse_config
    from fleetgate.fleet.prefix_index import ApproxIndex
    from fleetgate.fleet.sessions import SessionTable
    from fleetgate.fleet.state import Endpoint, PoolState
    from fleetgate.scaling.pools import WorkerPool

    pc = parse_config(
        "pools:\n  - name: p\n    workers: {engine: sim, model: m, scaling: {rule: concurrency, target: 2}}\n"
    ).pools[0]
    assert pc.workers is not None
    endpoints: list[Endpoint] = []
    state = PoolState("p", endpoints, ApproxIndex(16), SessionTable(60))
    wp = WorkerPool(pool_spec(pc), endpoints, state, FlowQueue("p", float, 8, 1))
    assert wp.cold() and wp.room(float("inf")) == 0  # held, not refused
    e = Endpoint(name="p-1", url="http://127.0.0.1:1", pool="p", max_streams=wp.max_streams)
    e.probe_ok()
    endpoints.append(e)
    assert not wp.cold() and wp.room(float("inf")) == 2
    e.in_flight = 2
    assert not e.routable() and wp.room(float("inf")) == 0
    wp.failure = "exited with code 2"
    assert wp.room(0.0) == float("inf")  # held requests go to hear why
