"""The simulator's `/v1/messages` and `/v1/messages/count_tokens` against what vLLM 0.26's source does
(`vllm/entrypoints/anthropic/`; the recorded answers are replayed by test_sim_messages_contract.py): the
details where vLLM differs from Anthropic's API, which a pass-through hands to clients as they are."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SimProcess, spawn_sim

MODEL = "llama-8b"
USER = {"role": "user", "content": "Plan two days in Tainan."}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    p = spawn_sim(tmp_path_factory.mktemp("sim"), "--served-model-name", MODEL, "--time-scale", "50")
    yield p
    p.stop()


def events(sim: SimProcess, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    r = httpx.post(f"{sim.url}/v1/messages", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    out = []
    for event in r.text.split("\n\n"):
        if event:
            kind, data = event.split("\n", 1)
            out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_a_stream_is_vllms_conversion_of_its_chat_stream(sim: SimProcess) -> None:
    got = events(sim, {"model": MODEL, "max_tokens": 6, "messages": [USER]})
    kinds = [k for k, _ in got]
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * 6,
                     "content_block_stop", "message_delta", "message_stop"]  # fmt: skip
    assert all(k == data["type"] for k, data in got)
    message = got[0][1]["message"]
    # The chat completion's id; `type` and `role` kept (recorded from vLLM 0.26); the prompt's count.
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["id"].startswith("chatcmpl-")
    assert message["usage"]["input_tokens"] > 0 and message["usage"]["output_tokens"] == 0
    assert got[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens"},
        "usage": {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 6},
    }
    assert got[-1][1] == {"type": "message_stop"}


def test_a_stop_sequence_ends_the_turn_without_naming_it(sim: SimProcess) -> None:
    r = httpx.post(
        f"{sim.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 400, "messages": [USER], "stop_sequences": [" "]},
    )
    body = r.json()
    assert r.status_code == 200 and body["stop_reason"] == "end_turn" and "stop_sequence" not in body
    # Text before the stop (none, when the first word's leading space stops it: vLLM then sends no block).
    assert all(" " not in b["text"] for b in body["content"]) and body["usage"]["output_tokens"] < 400


def test_count_tokens_is_the_rendered_chat_prompt(sim: SimProcess) -> None:
    turn = [
        USER,
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01", "name": "search", "input": {"query": "Tainan"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "Anping"}]},
    ]  # fmt: skip
    r = httpx.post(
        f"{sim.url}/v1/messages/count_tokens", json={"model": MODEL, "system": "Be brief.", "messages": turn}
    )
    n = r.json()["input_tokens"]
    assert r.json() == {"input_tokens": n, "context_management": {"original_input_tokens": n}}
    # The chat request vLLM makes of it: system first, the call as a tool call, the result as a tool message.
    chat = [
        {"role": "system", "content": "Be brief."},
        USER,
        {"role": "assistant", "tool_calls": [{"id": "toolu_01", "type": "function", "function": {
            "name": "search", "arguments": '{"query": "Tainan"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "Anping"},
    ]  # fmt: skip
    tokenized = httpx.post(f"{sim.url}/tokenize", json={"model": MODEL, "messages": chat}).json()
    assert n == tokenized["count"]


def test_errors_validation_in_openais_shape_the_rest_in_anthropics(sim: SimProcess) -> None:
    missing = httpx.post(f"{sim.url}/v1/messages", json={"model": MODEL, "messages": [USER]})
    assert missing.status_code == 400
    assert (
        missing.json()["error"]["type"] == "Bad Request"
        and missing.json()["error"]["param"] == "body.max_tokens"
    )
    unknown = httpx.post(
        f"{sim.url}/v1/messages", json={"model": "nope", "max_tokens": 5, "messages": [USER]}
    )
    assert unknown.status_code == 404
    assert unknown.json() == {
        "type": "error",
        "error": {"type": "NotFoundError", "message": "The model `nope` does not exist."},
    }
    # Tools default to tool_choice auto, which needs the server's tool flags (this one has none).
    tool = {"name": "search", "input_schema": {"type": "object"}}
    r = httpx.post(
        f"{sim.url}/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": [USER], "tools": [tool]}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    assert "--enable-auto-tool-choice" in r.json()["error"]["message"]
