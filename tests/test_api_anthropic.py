"""Anthropic's Messages API on the gateway, in front of simulators, driven by the real `anthropic` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from anthropic.types import Message, MessageParam, OutputConfigParam, ToolParam

from tests.conftest import GatewayProcess, SimProcess, spawn_sim
from tests.fleets import gateway
from tests.test_gateway import metric

MODEL = "llama-8b"
ALIAS = "claude-sonnet-4-5"
KEY = "sk-team-42"
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["city", "days"],
    },
}
ASK: list[MessageParam] = [{"role": "user", "content": "What is the weather in Tainan?"}]


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SimProcess]]:
    d = tmp_path_factory.mktemp("sims")
    procs = [
        spawn_sim(d, "--served-model-name", MODEL, "--time-scale", "20", "--enable-auto-tool-choice",
                  "--tool-call-parser", "hermes"),
        spawn_sim(d, "--served-model-name", "crashy", "--fault-crash-rate", "1",
                  "--fault-crash-after-tokens", "3"),
    ]  # fmt: skip
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sims: list[SimProcess]) -> Iterator[GatewayProcess]:
    config = f"""
keys:
  - {{name: team, key: {KEY}}}
pools:
  - name: main
    models: [{MODEL}, {{alias: {ALIAS}}}]
    endpoints: [{sims[0].url}]
  - name: crashy
    models: [crashy]
    endpoints: [{sims[1].url}]
"""
    with gateway(tmp_path_factory.mktemp("gw"), config) as g:
        yield g


@pytest.fixture
def client(gw: GatewayProcess) -> anthropic.Anthropic:
    # The SDK sends its key as x-api-key, the gateway's key for this tenant.
    return anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)


def test_plain_message_through_an_alias(client: anthropic.Anthropic, gw: GatewayProcess) -> None:
    before = metric(gw.admin, "fleetgate_tokens_total", direction="out", tenant="team")
    m = client.messages.create(model=ALIAS, max_tokens=12, system="You plan trips.", messages=ASK)
    assert m.type == "message" and m.role == "assistant" and m.model == ALIAS
    assert m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and m.content[0].type == "text" and m.content[0].text
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 12
    assert m.stop_reason in ("end_turn", "max_tokens")
    # Accounted as every other request: the tokens counted for the tenant.
    after = metric(gw.admin, "fleetgate_tokens_total", direction="out", tenant="team")
    assert after - before == m.usage.output_tokens


def test_streamed_events_in_order_and_the_final_message(client: anthropic.Anthropic) -> None:
    kinds: list[str] = []
    text = ""
    with client.messages.stream(model=MODEL, max_tokens=10, messages=ASK) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].type == "text" and final.content[0].text == text and text
    assert final.usage.output_tokens == 10 and final.stop_reason == "max_tokens"
    assert final.usage.input_tokens > 0


def test_stop_sequence_reported(client: anthropic.Anthropic) -> None:
    # The simulator writes prose: a space comes within its first words.
    m = client.messages.create(model=MODEL, max_tokens=400, stop_sequences=[" "], messages=ASK)
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == " "
    assert all(b.type == "text" and " " not in b.text for b in m.content)


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    m = client.messages.create(model=MODEL, max_tokens=300, tools=[WEATHER], messages=ASK)
    assert m.stop_reason == "tool_use"
    call = next(b for b in m.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.id
    jsonschema.validate(call.input, WEATHER["input_schema"])
    history: list[MessageParam] = [
        *ASK,
        {"role": "assistant", "content": m.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 31C"}],
        },
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


def test_json_output_follows_the_schema(client: anthropic.Anthropic) -> None:
    schema: dict[str, object] = {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]
    }  # fmt: skip
    config: OutputConfigParam = {"format": {"type": "json_schema", "schema": schema}}
    m = client.messages.create(model=MODEL, max_tokens=200, messages=ASK, output_config=config)
    assert m.content[0].type == "text"
    jsonschema.validate(json.loads(m.content[0].text), schema)


def test_count_tokens_matches_the_message_usage(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, system="You plan trips.", messages=ASK)
    used = client.messages.create(model=MODEL, max_tokens=1, system="You plan trips.", messages=ASK)
    assert counted.input_tokens == used.usage.input_tokens > 0


def test_errors_in_anthropics_shape(client: anthropic.Anthropic, gw: GatewayProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(model="claude-nope", max_tokens=5, messages=ASK)
    assert isinstance(nf.value.body, dict) and nf.value.body["type"] == "error"
    assert (
        nf.value.body["error"]["type"] == "not_found_error"
        and "claude-nope" in nf.value.body["error"]["message"]
    )
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=5, messages=ASK
        )
    bad = httpx.post(
        f"{gw.url}/v1/messages", headers={"x-api-key": KEY}, json={"model": MODEL, "messages": ASK}
    )
    assert bad.status_code == 400
    assert bad.json()["type"] == "error" and bad.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in bad.json()["error"]["message"]
    bad_bodies = [
        b"{not json",
        b"[]",
        b'{"model": 3}',
        b'{"model": "llama-8b", "max_tokens": 5, "messages": [{"role": "robot"}]}',
        b'{"model": "llama-8b", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "x"}]}]}',
        b'{"model": "llama-8b", "max_tokens": "many", "messages": []}',
    ]
    for body in bad_bodies:
        r = httpx.post(f"{gw.url}/v1/messages", headers={"x-api-key": KEY}, content=body)
        assert r.status_code == 400, body
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    wrong_method = httpx.get(f"{gw.url}/v1/messages", headers={"x-api-key": KEY})
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error"


def test_upstream_failure_mid_stream_is_an_error_event(gw: GatewayProcess) -> None:
    body = {"model": "crashy", "max_tokens": 50, "messages": ASK, "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/messages", headers={"x-api-key": KEY}, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "error"
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["type"] == "error" and last["error"]["type"] == "api_error"
    assert "message_stop" not in events


RECORDED = json.loads((Path(__file__).parent / "data" / "messages_contract.json").read_text())
_SDK_ERRORS: dict[int, type[anthropic.APIStatusError]] = {
    400: anthropic.BadRequestError,
    404: anthropic.NotFoundError,
}


@pytest.mark.parametrize(
    "name", ["err_unknown_model", "err_missing_max_tokens", "err_bad_json", "err_bad_role"]
)
def test_translated_errors_keep_the_status_vllm_gives(client: anthropic.Anthropic, name: str) -> None:
    """The error cases recorded from real vLLM 0.26's own /v1/messages (tests/data/messages_contract.json),
    translated: the same status, so the SDK raises the same class, but always in Anthropic's shape with
    Anthropic's type names, where vLLM answers its validation failures in OpenAI's shape and names its types
    after OpenAI's classes (`NotFoundError`). docs/gateway.md lists the differences."""
    case = RECORDED[name]
    body = case["request"]["body"]
    with pytest.raises(_SDK_ERRORS[case["status"]]) as info:
        if isinstance(body, str):  # malformed JSON: only the SDK's raw post sends it
            options: Any = {"headers": {"Content-Type": "application/json"}}
            client.post("/v1/messages", cast_to=Message, content=body.encode(), options=options)
        else:  # sent as recorded, past the SDK's own checks (max_tokens, roles)
            client.post("/v1/messages", cast_to=Message, body=body)
    assert info.value.status_code == case["status"]
    got = info.value.body
    assert isinstance(got, dict) and got["type"] == "error" and set(got["error"]) == {"type", "message"}
    assert got["error"]["type"] == {400: "invalid_request_error", 404: "not_found_error"}[case["status"]]
    if name == "err_unknown_model":  # the one vLLM answers in Anthropic's shape: the same words
        assert got["error"]["message"] == json.loads(case["body"])["error"]["message"]
