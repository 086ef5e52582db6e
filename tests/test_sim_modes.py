"""Sleep mode, runtime LoRA, faults, replicas and the admin endpoint, over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SimFactory
from tests.conftest import until as wait

DEV = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"{name}{labels} not found")


async def until(cond: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll a condition another process makes true, with a deadline."""
    deadline = time.monotonic() + seconds
    for _ in iter(int, 1):
        if cond():
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_dev_endpoints_exist_only_in_dev_mode(sim_factory: SimFactory) -> None:
    plain = sim_factory("--enable-sleep-mode", "--enable-lora")
    for method, path in [("GET", "/is_sleeping"), ("POST", "/sleep"), ("POST", "/v1/load_lora_adapter")]:
        r = httpx.request(method, plain.url + path, json={"lora_name": "a", "lora_path": "x"})
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})


def test_sleep_holds_generation_until_woken(sim_factory: SimFactory) -> None:
    sim = sim_factory("--served-model-name", "m", "--enable-sleep-mode", "--time-scale", "50", env=DEV)
    assert httpx.get(f"{sim.url}/is_sleeping").json() == {"is_sleeping": False}
    assert httpx.post(f"{sim.url}/sleep?level=1", timeout=10).status_code == 200
    assert httpx.get(f"{sim.url}/is_sleeping").json() == {"is_sleeping": True}
    assert httpx.get(f"{sim.url}/health").status_code == 200  # as vLLM: healthy while asleep
    assert metric(sim.url, "vllm:engine_sleep_state", sleep_state="awake") == 0
    assert metric(sim.url, "vllm:engine_sleep_state", sleep_state="weights_offloaded") == 1

    async def scenario() -> str:
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
            body = {"model": "m", "prompt": "x", "max_tokens": 3, "ignore_eos": True}
            pending = asyncio.ensure_future(client.post("/v1/completions", json=body))
            # The request is accepted and queued; it must not complete while the engine sleeps.
            await until(lambda: metric(sim.url, "vllm:num_requests_waiting") >= 1)
            assert not pending.done()
            woke = await client.post("/wake_up")
            assert woke.status_code == 200
            r = await pending
            assert r.status_code == 200
            return str(r.json()["choices"][0]["finish_reason"])

    assert asyncio.run(scenario()) == "length"
    assert metric(sim.url, "vllm:engine_sleep_state", sleep_state="awake") == 1
    assert httpx.post(f"{sim.url}/sleep?level=2", timeout=10).status_code == 200
    assert metric(sim.url, "vllm:engine_sleep_state", sleep_state="discard_all") == 1


def test_runtime_lora_lifecycle_matches_vllm(sim_factory: SimFactory, tmp_path: Path) -> None:
    adapter = tmp_path / "food-review"
    adapter.mkdir()
    sim = sim_factory("--served-model-name", "llama-8b", "--enable-lora", "--max-loras", "2", env=DEV)
    ok = httpx.post(
        f"{sim.url}/v1/load_lora_adapter", json={"lora_name": "food-review", "lora_path": str(adapter)}
    )
    assert (ok.status_code, ok.text) == (200, "Success: LoRA adapter 'food-review' added successfully.")
    dup = httpx.post(
        f"{sim.url}/v1/load_lora_adapter", json={"lora_name": "food-review", "lora_path": str(adapter)}
    )
    assert dup.status_code == 400 and dup.json()["error"]["type"] == "InvalidUserInput"
    bad = httpx.post(
        f"{sim.url}/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(tmp_path / "nope")}
    )
    assert bad.status_code == 404 and bad.json()["error"]["type"] == "NotFoundError"
    models = httpx.get(f"{sim.url}/v1/models").json()["data"]
    entry = next(m for m in models if m["id"] == "food-review")
    assert entry["parent"] == "llama-8b" and entry["root"] == str(adapter) and entry["max_model_len"] is None
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    done = client.completions.create(model="food-review", prompt="x", max_tokens=2)
    assert done.usage is not None and done.usage.completion_tokens >= 1
    gone = httpx.post(f"{sim.url}/v1/unload_lora_adapter", json={"lora_name": "food-review"})
    assert gone.status_code == 200
    with pytest.raises(openai.NotFoundError, match=r"The model `food-review` does not exist\."):
        client.completions.create(model="food-review", prompt="x", max_tokens=2)
    missing = httpx.post(f"{sim.url}/v1/unload_lora_adapter", json={"lora_name": "never"})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "The lora adapter 'never' cannot be found."


def test_a_third_adapter_is_deferred_with_max_loras_2(sim_factory: SimFactory) -> None:
    sim = sim_factory(
        "--served-model-name", "llama-8b", "--enable-lora", "--max-loras", "2",
        "--lora-modules", "a=org/a", "--lora-modules", "b=org/b", "--lora-modules", "c=org/c",
    )  # fmt: skip

    async def scenario() -> tuple[float, float]:
        async with httpx.AsyncClient(base_url=sim.url, timeout=60) as client:
            long = {"prompt": "x", "max_tokens": 400, "ignore_eos": True}
            tasks = [
                asyncio.ensure_future(client.post("/v1/completions", json={**long, "model": m})) for m in "ab"
            ]
            await until(lambda: metric(sim.url, "vllm:num_requests_running") >= 2)
            third = asyncio.ensure_future(client.post("/v1/completions", json={**long, "model": "c"}))
            await until(lambda: metric(sim.url, "vllm:num_requests_waiting") >= 1)
            deferred = metric(sim.url, "vllm:num_requests_waiting_by_reason", reason="deferred")
            capacity = metric(sim.url, "vllm:num_requests_waiting_by_reason", reason="capacity")
            for t in [*tasks, third]:
                t.cancel()
            return deferred, capacity

    assert asyncio.run(scenario()) == (1.0, 0.0)
    text = httpx.get(f"{sim.url}/metrics").text
    assert 'vllm:lora_requests_info{max_lora="2"' in text


def test_client_disconnect_aborts_the_request(sim_factory: SimFactory) -> None:
    sim = sim_factory("--served-model-name", "m")
    body = {"model": "m", "prompt": "x", "max_tokens": 5000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{sim.url}/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    wait(lambda: metric(sim.url, "vllm:request_success_total", finished_reason="abort") == 1)
    assert metric(sim.url, "vllm:num_requests_running") == 0


def test_injected_errors_hangs_and_health(sim_factory: SimFactory) -> None:
    sim = sim_factory("--served-model-name", "m", "--admin", "--fault-error-rate", "503=1")
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        client.completions.create(model="m", prompt="x", max_tokens=1)
    assert err.value.status_code == 503
    faults = httpx.post(f"{sim.url}/_sim/faults", json={"error_rates": {}, "health": "fail"}).json()
    assert faults["health"] == "fail" and faults["error_rates"] == {}
    assert httpx.get(f"{sim.url}/health").status_code == 503
    assert client.completions.create(model="m", prompt="x", max_tokens=1).choices
    httpx.post(f"{sim.url}/_sim/faults", json={"health": "hang", "hang_rate": 1.0})
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{sim.url}/health", timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sim.url}/v1/completions", json={"model": "m", "prompt": "x"}, timeout=0.3)
    rejected = httpx.post(f"{sim.url}/_sim/faults", json={"hang_rate": 2})
    assert rejected.status_code == 400


def test_crash_mid_stream_kills_the_server(sim_factory: SimFactory) -> None:
    sim = sim_factory(
        "--served-model-name", "m", "--fault-crash-rate", "1", "--fault-crash-after-tokens", "3"
    )
    body = {"model": "m", "prompt": "x", "max_tokens": 50, "ignore_eos": True, "stream": True}
    events = 0
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", f"{sim.url}/v1/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            events += line.startswith("data: ")
    assert 3 <= events < 50
    assert sim.proc.wait(10) == 1


def test_admin_state_and_match_report_true_cache(sim_factory: SimFactory) -> None:
    sim = sim_factory("--served-model-name", "m", "--admin")
    prompt = list(range(1000, 1100))
    assert httpx.post(f"{sim.url}/_sim/match", json={"prompt": prompt}).json()["hit_tokens"] == 0
    httpx.post(
        f"{sim.url}/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 1}, timeout=30
    )
    match = httpx.post(f"{sim.url}/_sim/match", json={"prompt": prompt}).json()
    assert match["hit_tokens"] == 96 and match["prompt_tokens"] == 100
    state = httpx.get(f"{sim.url}/_sim/state").json()
    assert len(state["cached_block_hashes"]) == 6 and state["running"] == [] and state["waiting"] == []


def test_admin_is_off_by_default(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    assert httpx.get(f"{sim.url}/_sim/state").status_code == 404


def test_replicas_are_independent_processes(sim_factory: SimFactory) -> None:
    from tests.conftest import free_consecutive_ports, wait_ready

    base = free_consecutive_ports(2)
    sim = sim_factory("--replicas", "2", "--served-model-name", "m", "--seed", "1", port=base)
    other = f"http://127.0.0.1:{base + 1}"
    wait_ready(other, sim.proc, sim.log)
    for url in (sim.url, other):
        models = httpx.get(f"{url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["m"]
    httpx.post(f"{sim.url}/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1}, timeout=30)
    assert metric(sim.url, "vllm:request_success_total", finished_reason="length") == 1
    assert metric(other, "vllm:request_success_total", finished_reason="length") == 0
    assert sim.stop() == 0


def test_a_replica_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    """Replica 2's port is taken: the supervisor must not leave replica 1 serving as if all were well."""
    import socket
    import subprocess
    import sys

    from tests.conftest import free_port

    for _ in range(20):  # a free port whose successor we can take
        base = free_port()
        taken = socket.socket()
        try:
            taken.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            taken.close()
    taken.listen()
    cmd = [sys.executable, "-m", "fleetgate", "sim", "--replicas", "2", "--port", str(base),
           "--startup-time", "0", "--served-model-name", "m"]  # fmt: skip
    log = tmp_path / "sim.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        code = proc.wait(60)
    finally:
        taken.close()
        if proc.poll() is None:
            proc.kill()
    assert code != 0
    assert "address already in use" in log.read_text().lower()
    with socket.socket() as probe:  # replica 1 was stopped too: its port is free again
        probe.bind(("127.0.0.1", base))


def test_startup_log_is_printed_before_listening(sim_factory: SimFactory) -> None:
    sim = sim_factory("--served-model-name", "m")
    log = sim.log.read_text()
    assert "Starting vLLM server on http://127.0.0.1:" in log
    assert "non-default args:" in log
    assert json.dumps(["m"]).replace('"', "'") in log


def test_embedding_profile_serves_embeddings_not_generation(sim_factory: SimFactory) -> None:
    sim = sim_factory("--profile", "cpu-minilm-embed", "--served-model-name", "minilm")
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    texts = ["a night market in Tainan", "a night market in Tainan city", "quarterly tax filing rules"]
    out = client.embeddings.create(model="minilm", input=texts)
    vecs = [d.embedding for d in out.data]
    assert [d.index for d in out.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vecs)
    assert all(abs(sum(x * x for x in v) - 1) < 1e-6 for v in vecs)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    assert out.usage.prompt_tokens == sum(
        httpx.post(f"{sim.url}/tokenize", json={"prompt": t}).json()["count"] for t in texts
    )
    assert httpx.post(f"{sim.url}/v1/chat/completions", json={"model": "minilm"}).status_code == 404


def test_embedding_requests_vllm_refuses_are_400s(sim_factory: SimFactory) -> None:
    """all-MiniLM-L6-v2 is no matryoshka model: vLLM answers any `dimensions` with 400 (the embedded engine
    too), and token ids outside the vocabulary with 400. The simulator built a vector `dimensions` long
    (MemoryError) and hashed negative ids (OverflowError): plain-text 500s, found by
    tests/test_gateway_schemathesis.py."""
    sim = sim_factory("--profile", "cpu-minilm-embed", "--served-model-name", "minilm")
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    for dimensions in (64, 6351521582):
        with pytest.raises(openai.BadRequestError, match="does not support matryoshka") as e:
            client.embeddings.create(model="minilm", input="x", dimensions=dimensions)
        assert e.value.body == {
            "message": 'Model "minilm" does not support matryoshka representation, changing output '
            "dimensions will lead to poor results.",
            "type": "BadRequestError",
            "param": "dimensions",
            "code": 400,
        }
    for ids in ([5, -1], [[5], [2**40]]):
        with pytest.raises(openai.BadRequestError, match="Token id out of vocabulary range"):
            client.embeddings.create(model="minilm", input=ids)
    assert len(client.embeddings.create(model="minilm", input=[5, 6]).data[0].embedding) == 384


def test_responses_api_streams_events(sim_factory: SimFactory) -> None:
    sim = sim_factory("--served-model-name", "m", "--time-scale", "20")
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    kinds: list[str] = []
    text = ""
    final = None
    for event in client.responses.create(model="m", input="hi", max_output_tokens=6, stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert final is not None and final.output_text == text
    assert final.usage is not None and final.usage.output_tokens <= 6


def test_reuse_port_puts_replicas_behind_one_address(sim_factory: SimFactory) -> None:
    sim = sim_factory("--replicas", "2", "--reuse-port", "--served-model-name", "m")
    # Fresh connections are spread by the kernel; every one is answered, whichever process takes it.
    for _ in range(10):
        with httpx.Client() as client:
            r = client.post(f"{sim.url}/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1})
            assert r.status_code == 200
    assert sim.stop() == 0


def test_idle_time_is_not_credited_to_the_next_step(sim_factory: SimFactory) -> None:
    """After an idle gap the first step takes its full modelled time (the clock does not catch up)."""
    sim = sim_factory("--served-model-name", "m")
    prompt = list(range(1000, 2024))
    step = 14.6e-3 + 1024 * 21.3e-6  # H200 profile: per-request overhead + a 1,024-token prefill step
    for _ in range(3):
        start = time.monotonic()
        with httpx.stream(
            "POST",
            f"{sim.url}/v1/completions",
            json={"model": "m", "prompt": prompt, "max_tokens": 2, "stream": True},
        ) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            ttft = time.monotonic() - start
            assert first != "data: [DONE]"
            assert [line for line in lines if line][-1] == "data: [DONE]"
        assert ttft >= 0.9 * step
