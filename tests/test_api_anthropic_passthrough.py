"""Anthropic's Messages API passed through (`anthropic: passthrough`) to simulators serving `/v1/messages` as
vLLM does, driven by the real `anthropic` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import jsonschema
import pytest
from anthropic.types import MessageParam

from fleetgate.config import ConfigError, load_config
from tests.conftest import GatewayProcess, SimProcess, spawn_sim, until
from tests.fleets import gateway
from tests.test_api_anthropic import ALIAS, ASK, MODEL, WEATHER
from tests.test_gateway import metric

KEY = "sk-team-7"


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SimProcess]]:
    d = tmp_path_factory.mktemp("sims")
    procs = [
        spawn_sim(d, "--served-model-name", MODEL, "--time-scale", "20", "--enable-auto-tool-choice",
                  "--tool-call-parser", "hermes"),
        spawn_sim(d, "--served-model-name", "crashy", "--fault-crash-rate", "1",
                  "--fault-crash-after-tokens", "3"),
        spawn_sim(d, "--served-model-name", "slow", "--fault-first-byte-delay", "3"),
        *(spawn_sim(d, "--served-model-name", "pair", "--time-scale", "50", "--seed", str(i))
          for i in range(2)),
    ]  # fmt: skip
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sims: list[SimProcess]) -> Iterator[GatewayProcess]:
    ledger = tmp_path_factory.mktemp("ledger") / "tenancy.db"
    config = f"""
keys:
  - {{name: team, key: {KEY}}}
tenancy: {{database: "sqlite:///{ledger}"}}
pools:
  - name: main
    anthropic: passthrough
    models: [{MODEL}, {{alias: {ALIAS}}}]
    endpoints: [{sims[0].url}]
    limits: {{max_tokens_cap: 4000}}
  - name: crashy
    anthropic: passthrough
    models: [crashy]
    endpoints: [{sims[1].url}]
  - name: slow
    anthropic: passthrough
    models: [slow]
    endpoints: [{sims[2].url}]
    timeouts: {{first_byte_stream: 0.3, first_byte_nonstream: 0.3}}
    retries: {{attempts: 1}}
  - name: pair
    anthropic: passthrough
    models: [pair]
    endpoints: [{{url: '{sims[3].url}', name: e0}}, {{url: '{sims[4].url}', name: e1}}]
    routing: {{debug_headers: true}}
"""
    with gateway(tmp_path_factory.mktemp("gw"), config) as g:
        yield g


@pytest.fixture
def client(gw: GatewayProcess) -> anthropic.Anthropic:
    # The SDK sends its key as x-api-key.
    return anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)


def tokens(gw: GatewayProcess, direction: str) -> float:
    return metric(gw.admin, "fleetgate_tokens_total", direction=direction, tenant="team")


def test_plain_message_reaches_the_upstreams_messages_route(
    client: anthropic.Anthropic, gw: GatewayProcess
) -> None:
    before_in, before_out = tokens(gw, "in"), tokens(gw, "out")
    m = client.messages.create(model=ALIAS, max_tokens=12, system="You plan trips.", messages=ASK)
    # vLLM's /v1/messages keeps its chat completion's id and names the served model; the translated route
    # would answer msg_... and the alias.
    assert m.id.startswith("chatcmpl-") and m.model == MODEL
    assert m.type == "message" and m.role == "assistant"
    assert [b.type for b in m.content] == ["text"] and m.content[0].type == "text" and m.content[0].text
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 12
    # Accounted from Anthropic's usage fields, as every other request.
    assert tokens(gw, "in") - before_in == m.usage.input_tokens
    assert tokens(gw, "out") - before_out == m.usage.output_tokens
    requests = metric(gw.admin, "fleetgate_requests_total", route="/v1/messages", model=ALIAS, status="200")
    assert requests == 1  # the only request for the alias in this module
    # The usage ledger's row has the same counts.
    until(lambda: ledger_rows(gw, ALIAS) != [], "the ledger's row")
    (row,) = ledger_rows(gw, ALIAS)
    assert (row["requests"], row["prompt_tokens"], row["output_tokens"]) == (
        1, m.usage.input_tokens, m.usage.output_tokens
    )  # fmt: skip


def ledger_rows(gw: GatewayProcess, model: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = httpx.get(f"{gw.admin}/admin/usage").json()["usage"]
    return [r for r in rows if r["model"] == model]


def test_streamed_events_and_usage_counted(client: anthropic.Anthropic, gw: GatewayProcess) -> None:
    before_in, before_out = tokens(gw, "in"), tokens(gw, "out")
    kinds: list[str] = []
    text = ""
    with client.messages.stream(model=MODEL, max_tokens=10, messages=ASK) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        final = stream.get_final_message()
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.id.startswith("chatcmpl-")
    assert final.content[0].type == "text" and final.content[0].text == text and text
    assert final.usage.output_tokens == 10 and final.stop_reason == "max_tokens"
    # Read from message_start (input) and message_delta (both) as the events passed.
    assert tokens(gw, "in") - before_in == final.usage.input_tokens > 0
    assert tokens(gw, "out") - before_out == 10


def test_conversations_keep_to_the_endpoint_holding_their_prefix(client: anthropic.Anthropic) -> None:
    # Prefix affinity from system + messages, as for chat: each group's requests land where its prompt is.
    landed: dict[int, set[str]] = {0: set(), 1: set()}
    hits = []
    for round_ in range(3):
        for g in (0, 1):
            system = (
                f"Group {g}. " + "You are the travel desk of a large booking site. Answer with care. " * 40
            )
            ask: list[MessageParam] = [{"role": "user", "content": f"Question {round_} of group {g}?"}]
            raw = client.messages.with_raw_response.create(
                model="pair", max_tokens=2, system=system, messages=ask
            )
            landed[g].add(raw.headers["x-fleetgate-endpoint"])
            if round_:
                hits.append(float(raw.headers["x-fleetgate-prefix-hit"]))
                assert raw.headers["x-fleetgate-route"] == "prefix"
            assert raw.parse().id.startswith("chatcmpl-")
    assert all(len(where) == 1 for where in landed.values()), landed
    assert min(hits) > 0.8  # the shared system prompt is most of each prompt


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    m = client.messages.create(model=MODEL, max_tokens=300, tools=[WEATHER], messages=ASK)
    assert m.stop_reason == "tool_use"
    call = next(b for b in m.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.id
    jsonschema.validate(call.input, WEATHER["input_schema"])
    history: list[MessageParam] = [
        *ASK,
        {"role": "assistant", "content": m.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}]},
    ]
    answer = client.messages.create(model=MODEL, max_tokens=20, tools=[WEATHER], messages=history)
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].type == "text"


def test_forced_tool_streams_input_json(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=300, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"},
        messages=ASK,
    ) as stream:  # fmt: skip
        partial = "".join(
            e.delta.partial_json
            for e in stream
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        )
        final = stream.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use" and block.input == json.loads(partial)
    assert final.stop_reason == "tool_use"


def test_count_tokens_is_the_upstreams(client: anthropic.Anthropic, gw: GatewayProcess) -> None:
    counted = client.messages.count_tokens(model=MODEL, system="You plan trips.", messages=ASK)
    used = client.messages.create(model=MODEL, max_tokens=1, system="You plan trips.", messages=ASK)
    assert counted.input_tokens == used.usage.input_tokens > 0
    # The body reached vLLM's own count_tokens (only it answers context_management), which drops Claude
    # Code's billing header from the system prompt.
    body = {
        "model": MODEL,
        "messages": ASK,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=93b1f"},
            {"type": "text", "text": "You plan trips."},
        ],
    }
    r = httpx.post(f"{gw.url}/v1/messages/count_tokens", headers={"x-api-key": KEY}, json=body)
    assert r.status_code == 200
    assert r.json() == {
        "input_tokens": counted.input_tokens,
        "context_management": {"original_input_tokens": counted.input_tokens},
    }


def post(gw: GatewayProcess, body: bytes | dict[str, object], key: str = KEY) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{gw.url}/v1/messages", headers={"x-api-key": key}, content=content)


def test_errors_in_anthropics_shape(client: anthropic.Anthropic, gw: GatewayProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(model="claude-nope", max_tokens=5, messages=ASK)
    assert isinstance(nf.value.body, dict) and nf.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=5, messages=ASK
        )
    with pytest.raises(anthropic.BadRequestError) as capped:
        client.messages.create(model=MODEL, max_tokens=5000, messages=ASK)
    assert isinstance(capped.value.body, dict)
    assert "cap of 4000" in capped.value.body["error"]["message"]
    gateway_refused = [
        b"{not json",
        b"[]",
        json.dumps({"model": MODEL, "messages": ASK}).encode(),  # max_tokens missing
        json.dumps({"model": MODEL, "max_tokens": "many", "messages": ASK}).encode(),
        json.dumps({"model": MODEL, "max_tokens": 5, "messages": {"role": "user"}}).encode(),
        json.dumps({"model": MODEL, "max_tokens": 5, "messages": ASK, "stream": "sometimes"}).encode(),
    ]
    for body in gateway_refused:
        r = post(gw, body)
        assert r.status_code == 400, body
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error", body
    # vLLM's validation answers in OpenAI's shape: the client still gets Anthropic's, same status and message.
    r = post(gw, {"model": MODEL, "max_tokens": 5, "messages": [{"role": "robot", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert "messages" in r.json()["error"]["message"] and "robot" in r.json()["error"]["message"]
    # An upstream error already in Anthropic's shape passes unchanged (vLLM keeps its OpenAI type name).
    named = {"type": "tool", "name": "get_time"}
    r = post(gw, {"model": MODEL, "max_tokens": 5, "messages": ASK, "tools": [WEATHER], "tool_choice": named})
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "BadRequestError"
    assert "get_time" in r.json()["error"]["message"]


def test_upstream_failure_mid_stream_is_an_error_event(gw: GatewayProcess) -> None:
    body = {"model": "crashy", "max_tokens": 50, "messages": ASK, "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/messages", headers={"x-api-key": KEY}, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "error"
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["type"] == "error" and last["error"]["type"] == "api_error"
    assert "message_stop" not in events and "data: [DONE]" not in lines


def test_first_byte_timeout_is_an_anthropic_error(client: anthropic.Anthropic) -> None:
    stream = client.messages.stream(model="slow", max_tokens=5, messages=ASK)
    with pytest.raises(anthropic.APIStatusError) as timed_out, stream as events:
        list(events)
    assert timed_out.value.status_code == 504
    assert isinstance(timed_out.value.body, dict) and timed_out.value.body["type"] == "error"
    assert "first_byte_stream" in timed_out.value.body["error"]["message"]


def test_client_disconnect_aborts_upstream(gw: GatewayProcess, sims: list[SimProcess]) -> None:
    sim = sims[0]
    aborted = metric(sim.url, "vllm:request_success_total", finished_reason="abort")
    body = {"model": MODEL, "max_tokens": 4000, "messages": ASK, "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/messages", headers={"x-api-key": KEY}, json=body) as r:
        for line in r.iter_lines():
            if line.startswith("event: content_block_delta"):
                break  # leave with the answer under way
    until(
        lambda: metric(sim.url, "vllm:request_success_total", finished_reason="abort") == aborted + 1,
        "the upstream request to be aborted",
    )
    until(lambda: metric(sim.url, "vllm:num_requests_running") == 0, "nothing running upstream")


def test_an_engines_error_about_the_request_does_not_take_the_endpoint_out(
    client: anthropic.Anthropic,
) -> None:
    """vLLM answers 500 to an image for a text-only model (recorded): a client sending screenshots must not
    open the breaker of every endpoint it reaches, refusing everyone's valid requests until the next probe."""
    image: list[MessageParam] = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:9/x.png"}},
    ]}]  # fmt: skip
    for _ in range(8):  # more than the breaker's threshold on each of the pool's two endpoints
        with pytest.raises(anthropic.InternalServerError) as e:
            client.messages.create(model="pair", max_tokens=4, messages=image)
        assert "not a multimodal model" in e.value.message
    m = client.messages.create(model="pair", max_tokens=4, messages=ASK)
    assert m.content and m.usage.output_tokens > 0


def test_passthrough_is_refused_for_embedded_workers(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "pools:\n  - name: local\n    anthropic: passthrough\n    workers: {engine: embedded, model: demo}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    text = str(info.value)
    assert f"{path}:3:" in text and "pools[0].anthropic" in text and "embedded engine" in text
