"""The gateway in front of real simulator processes, driven with the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory, SimFactory, SimProcess, spawn_sim, until

MODEL = "llama-8b"


def metric(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += float(s.value)
    return total


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SimProcess]]:
    d = tmp_path_factory.mktemp("sims")
    procs = [
        spawn_sim(d, "--served-model-name", MODEL, "--time-scale", "20", "--seed", str(i)) for i in range(2)
    ]
    yield procs
    for p in procs:
        p.stop()


def client(url: str, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, **kw)  # type: ignore[arg-type]


def test_chat_non_streamed_and_streamed_through_the_gateway(
    gateway_factory: GatewayFactory, sims: list[SimProcess]
) -> None:
    gw = gateway_factory(upstreams=[s.url for s in sims])
    c = client(gw.url)
    out = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Plan two days in Tainan."}], max_tokens=8,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert out.model == MODEL and out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 8
    chunks = list(
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 5
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_async_sdk_streams_and_completions(gateway_factory: GatewayFactory, sims: list[SimProcess]) -> None:
    gw = gateway_factory(upstreams=[s.url for s in sims])

    async def go() -> list[str]:
        c = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
        streams = [
            await c.completions.create(
                model=MODEL,
                prompt="Cloud Run is a ",
                max_tokens=6,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            for _ in range(8)
        ]

        async def text(s: openai.AsyncStream[openai.types.Completion]) -> str:
            return "".join([ch.choices[0].text async for ch in s if ch.choices])

        return await asyncio.gather(*(text(s) for s in streams))

    texts = asyncio.run(go())
    assert len(texts) == 8 and all(t for t in texts)
    # Both simulators took part: least-loaded routing spread the concurrent streams.
    served = [metric(s.url, "vllm:request_success_total") for s in sims]
    assert all(n > 0 for n in served)


def test_request_id_is_returned_and_models_are_aggregated(
    gateway_factory: GatewayFactory, sims: list[SimProcess]
) -> None:
    gw = gateway_factory(upstreams=[s.url for s in sims])
    r = httpx.post(
        f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1},
        headers={"x-request-id": "trace-me-123"},
    )  # fmt: skip
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-me-123"
    fresh = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
    assert len(fresh.headers["x-request-id"]) >= 16
    models = client(gw.url).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_bad_requests_get_openai_errors(gateway_factory: GatewayFactory, sims: list[SimProcess]) -> None:
    gw = gateway_factory(upstreams=[s.url for s in sims])
    c = client(gw.url)
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.status_code == 404
    bad = httpx.post(f"{gw.url}/v1/chat/completions", content=b'{"model": "x", "messages": [')
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    no_model = httpx.post(f"{gw.url}/v1/chat/completions", json={"messages": []})
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    big = httpx.post(f"{gw.url}/v1/completions", content=b"x" * (5 * 2**20))
    assert big.status_code == 413
    assert httpx.get(f"{gw.url}/v1/nothing").status_code == 404
    # The upstream's own 400 (vLLM's wording) comes through unchanged, never as a 5xx.
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=-3)


def test_wrong_method_is_405_with_allow_on_every_route(
    gateway_factory: GatewayFactory, sims: list[SimProcess]
) -> None:
    gw = gateway_factory(upstreams=[s.url for s in sims])
    for method, path, allowed in [
        ("POST", "/version", "GET"),
        ("POST", "/health", "GET"),
        ("DELETE", "/v1/models", "GET"),
        ("GET", "/v1/chat/completions", "POST"),
    ]:
        r = httpx.request(method, gw.url + path)
        assert r.status_code == 405, (method, path)
        assert r.headers["allow"] == allowed
        err = r.json()["error"]
        assert err["type"] == "MethodNotAllowedError" and err["code"] == 405 and method in err["message"]


def test_all_backends_down_is_503_with_retry_after(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    sim = sim_factory("--served-model-name", MODEL)
    gw = gateway_factory(upstreams=[sim.url])
    sim.stop()
    deadline = time.monotonic() + 10
    while httpx.get(f"{gw.url}/ready").status_code == 200:  # the health loop notices within an interval
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["error"]["type"] == "ServiceUnavailableError"


def test_retry_goes_to_another_endpoint_before_the_first_byte(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    good = sim_factory("--served-model-name", MODEL, "--time-scale", "20")
    bad = sim_factory("--served-model-name", MODEL, "--fault-error-rate", "503=1")
    gw = gateway_factory(upstreams=[bad.url, good.url])
    c = client(gw.url)
    for _ in range(10):
        out = c.completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert out.choices
    assert metric(good.url, "vllm:request_success_total") == 10
    assert metric(gw.admin, "fleetgate_retries_total") >= 1


def test_backend_killed_mid_stream_ends_with_an_error_event(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    sim = sim_factory(
        "--served-model-name", MODEL, "--fault-crash-rate", "1", "--fault-crash-after-tokens", "3"
    )
    gw = gateway_factory(upstreams=[sim.url])
    body = {"model": MODEL, "prompt": "x", "max_tokens": 50, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2] and "BadGatewayError" in events[-2]
    assert 3 <= len(events) - 2 < 50


def test_client_disconnect_aborts_upstream_fast(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    sim = sim_factory("--served-model-name", MODEL)
    gw = gateway_factory(upstreams=[sim.url])
    body = {"model": MODEL, "prompt": "x", "max_tokens": 5000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/completions", json=body) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
    # The simulator sees the abort (its request_success_total{finished_reason="abort"}) while the stream still
    # had minutes to run; how fast is benchmarks/gateway_streams.py's to measure.
    until(
        lambda: metric(sim.url, "vllm:request_success_total", finished_reason="abort") >= 1,
        "the upstream request to be aborted",
    )


def test_hung_backend_times_out_and_slow_first_byte_within_limit_works(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    hung = sim_factory("--served-model-name", MODEL, "--fault-hang-rate", "1")
    slow = sim_factory("--served-model-name", "slow", "--fault-first-byte-delay", "0.3")
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
pools:
  - name: hung
    models: [{MODEL}]
    endpoints: [{hung.url}]
    timeouts: {{connect: 1, first_byte_stream: 0.5, first_byte_nonstream: 0.5, idle_gap: 5, total: 10}}
  - name: slow
    models: [slow]
    endpoints: [{slow.url}]
    timeouts: {{connect: 1, first_byte_stream: 2, first_byte_nonstream: 2, idle_gap: 5, total: 10}}
"""
    gw = gateway_factory(config)
    started = time.monotonic()
    r = httpx.post(
        f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1}, timeout=10
    )
    # Not before the first-byte timeout; the request's own total (10 s) would give the same status later.
    assert r.status_code == 504 and time.monotonic() - started > 0.45
    assert "sent nothing within 0.5 s" in r.json()["error"]["message"]
    ok = httpx.post(
        f"{gw.url}/v1/completions", json={"model": "slow", "prompt": "x", "max_tokens": 1}, timeout=10
    )
    assert ok.status_code == 200


def test_api_keys_are_required_when_configured(
    gateway_factory: GatewayFactory, sims: list[SimProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
keys:
  - {{name: web, key: sk-web-123, priority: 10}}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sims[0].url}]
"""
    gw = gateway_factory(config)
    with pytest.raises(openai.AuthenticationError):
        client(gw.url).models.list()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    ok = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-web-123", max_retries=0)
    assert ok.completions.create(model=MODEL, prompt="x", max_tokens=1).choices
    assert httpx.get(f"{gw.url}/metrics").status_code == 404  # metrics live on the admin address only
    assert httpx.get(f"{gw.admin}/metrics").status_code == 200


def test_max_tokens_default_and_cap(gateway_factory: GatewayFactory, sims: list[SimProcess]) -> None:
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
pools:
  - name: main
    models: [{MODEL}, {{alias: gpt-4o-mini}}]
    endpoints: [{sims[1].url}]
    limits: {{max_tokens_default: 7, max_tokens_cap: 100}}
"""
    gw = gateway_factory(config)
    c = client(gw.url)
    out = c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_body={"ignore_eos": True}
    )
    assert out.usage is not None and out.usage.completion_tokens == 7  # the pool's default applied
    assert out.model == MODEL  # the alias was rewritten to the served model
    with pytest.raises(openai.BadRequestError, match="cap"):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=101)


def test_sigterm_drains_streams_in_flight(gateway_factory: GatewayFactory, sim_factory: SimFactory) -> None:
    sim = sim_factory("--served-model-name", MODEL)
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
shutdown: {{pre_stop_delay: 0.3, drain_timeout: 20}}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sim.url}]
"""
    gw = gateway_factory(config)
    results: list[list[str]] = []

    def stream() -> None:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 60, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{gw.url}/v1/completions", json=body, timeout=30) as r:
            results.append([line for line in r.iter_lines() if line.startswith("data: ")])

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    while metric(sim.url, "vllm:num_requests_running") < 4:
        time.sleep(0.01)
    gw.proc.send_signal(signal.SIGTERM)
    assert httpx.get(f"{gw.url}/ready").status_code == 503  # not ready at once, still serving
    for t in threads:
        t.join(30)
    assert gw.proc.wait(30) == 0
    assert len(results) == 4
    for events in results:
        assert events[-1] == "data: [DONE]" and len(events) == 61  # every stream ran to its end


def test_endpoint_leaves_on_failure_and_returns_within_two_probe_intervals(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    sim = sim_factory("--served-model-name", MODEL, "--admin")
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sim.url}]
    health: {{interval: 0.5, timeout: 0.3}}
"""
    gw = gateway_factory(config)

    def state() -> str:
        return str(httpx.get(f"{gw.admin}/admin/fleet").json()["pools"]["main"]["endpoints"][0]["state"])

    httpx.post(f"{sim.url}/_sim/faults", json={"health": "fail"})
    deadline = time.monotonic() + 5
    while state() != "open":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert httpx.get(f"{gw.url}/ready").status_code == 503
    httpx.post(f"{sim.url}/_sim/faults", json={"health": "ok"})
    until(lambda: state() == "closed", "the endpoint to be probed healthy again")
    assert httpx.get(f"{gw.url}/ready").status_code == 200


def test_a_sleeping_vllm_is_not_routable(gateway_factory: GatewayFactory, sim_factory: SimFactory) -> None:
    dev = {"VLLM_SERVER_DEV_MODE": "1"}
    awake = sim_factory("--served-model-name", MODEL, "--time-scale", "20")
    asleep = sim_factory("--served-model-name", MODEL, "--enable-sleep-mode", "--time-scale", "50", env=dev)
    assert httpx.post(f"{asleep.url}/sleep?level=1", timeout=10).status_code == 200
    gw = gateway_factory(upstreams=[asleep.url, awake.url])
    deadline = time.monotonic() + 5
    fleet = httpx.get(f"{gw.admin}/admin/fleet").json()["pools"]["default"]["endpoints"]
    while any(e["load"] is None for e in fleet):  # wait for the first scrapes
        assert time.monotonic() < deadline
        time.sleep(0.02)
        fleet = httpx.get(f"{gw.admin}/admin/fleet").json()["pools"]["default"]["endpoints"]
    by_url = {e["url"]: e for e in fleet}
    assert by_url[asleep.url]["routable"] is False and by_url[awake.url]["routable"] is True
    c = client(gw.url)
    for _ in range(6):
        assert c.completions.create(model=MODEL, prompt="x", max_tokens=1).choices
    assert metric(awake.url, "vllm:request_success_total") == 6


def test_gateway_metrics_use_the_fleetgate_namespace(
    gateway_factory: GatewayFactory, sims: list[SimProcess]
) -> None:
    gw = gateway_factory(upstreams=[s.url for s in sims])
    c = client(gw.url)
    list(c.completions.create(model=MODEL, prompt="x", max_tokens=3, stream=True,
                              stream_options={"include_usage": True}))  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="not-a-model-we-know", prompt="x", max_tokens=1)
    text = httpx.get(f"{gw.admin}/metrics").text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "fleetgate_requests",
        "fleetgate_time_to_first_event_seconds",
        "fleetgate_endpoint_routable",
    } <= names
    assert metric(gw.admin, "fleetgate_requests_total", model=MODEL, status="200") == 1
    assert metric(gw.admin, "fleetgate_tokens_total", direction="out") == 3
    assert "not-a-model-we-know" not in text  # unknown names never become label values


def test_json_access_log_carries_the_request_id(
    gateway_factory: GatewayFactory, sims: list[SimProcess]
) -> None:
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
log: {{format: json, level: info}}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sims[0].url}]
"""
    gw = gateway_factory(config)
    r = httpx.post(
        f"{gw.url}/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 2},
        headers={"x-request-id": "abc-42"},
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 5
    while '"abc-42"' not in gw.log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    line = next(ln for ln in gw.log.read_text().splitlines() if '"abc-42"' in ln)
    record = json.loads(line)
    assert record["msg"] == "request" and record["status"] == 200 and record["model"] == MODEL
    assert record["pool"] == "main" and record["completion_tokens"] == 2 and record["seconds"] > 0


def test_adapters_loaded_later_are_discovered(
    gateway_factory: GatewayFactory, sim_factory: SimFactory, tmp_path: Path
) -> None:
    dev = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    sim = sim_factory("--served-model-name", MODEL, "--enable-lora", "--max-loras", "2", env=dev)
    gw = gateway_factory(upstreams=[sim.url])
    adapter = tmp_path / "travel-zh"
    adapter.mkdir()
    loaded = httpx.post(
        f"{sim.url}/v1/load_lora_adapter", json={"lora_name": "travel-zh", "lora_path": str(adapter)}
    )
    assert loaded.status_code == 200
    # /v1/models is re-read every few seconds; the new adapter becomes a model the gateway routes.
    deadline = time.monotonic() + 10
    while "travel-zh" not in [m.id for m in client(gw.url).models.list().data]:
        assert time.monotonic() < deadline, "adapter never discovered"
        time.sleep(0.1)
    assert client(gw.url).completions.create(model="travel-zh", prompt="x", max_tokens=1).choices
