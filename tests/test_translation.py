"""Translation both ways on recorded bodies: requests of other APIs into OpenAI ones, and vLLM's recorded
answers and streams (tests/data/contract*.json) into Anthropic's and Ollama's shapes, chunk by chunk."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.api import anthropic, ollama
from fleetgate.api.translation import TranslatingSend, Translator
from fleetgate.protocol import OpenAIError
from tests.conftest import DATA

CONTRACT = json.loads((DATA / "contract.json").read_text())
TOOLS = json.loads((DATA / "contract_tools.json").read_text())
SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-request-id", b"r1")]
JSON = [(b"content-type", b"application/json"), (b"x-request-id", b"r1")]


def relay(t: Translator, status: int, headers: list[tuple[bytes, bytes]], bodies: list[bytes]) -> list[Any]:
    """Feed ASGI messages as the relay sends them; what the client got after each one (start first)."""
    got: list[list[dict[str, Any]]] = []

    async def send(message: dict[str, Any]) -> None:
        got[-1].append(message)

    async def go() -> None:
        s = TranslatingSend(send, t)
        got.append([])
        await s({"type": "http.response.start", "status": status, "headers": headers})
        for i, body in enumerate(bodies):
            got.append([])
            await s({"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1})

    asyncio.run(go())
    return got


def recorded_stream(case: dict[str, Any]) -> list[bytes]:
    return [c[1].encode() for c in case["chunks"]] + [b""]


def openai_deltas(case: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """The recorded stream's text, tool-call arguments and usage, put together."""
    text, args, usage = "", "", None
    for _, raw in case["chunks"]:
        for event in raw.split("\n\n"):
            if not event.startswith("data: {"):
                continue
            chunk = json.loads(event[6:])
            usage = chunk.get("usage") or usage
            for c in chunk["choices"]:
                text += c["delta"].get("content") or ""
                for call in c["delta"].get("tool_calls") or ():
                    args += call["function"].get("arguments") or ""
    return text, args, usage


def sse_events(messages: list[list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    data = b"".join(
        m.get("body", b"") for batch in messages for m in batch if m["type"] == "http.response.body"
    )
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            kind, payload = block.split("\n", 1)
            out.append((kind.removeprefix("event: "), json.loads(payload.removeprefix("data: "))))
    return out


# ---- Anthropic, answers ---------------------------------------------------------------------------------
def test_recorded_chat_stream_becomes_message_events_without_delay() -> None:
    case = CONTRACT["chat_stream_usage"]
    t = anthropic.MessagesTranslator()
    t.request(
        {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    got = relay(t, 200, SSE, recorded_stream(case))
    assert dict(got[0][0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    # Every recorded chunk with text goes out as soon as it came in, as a text delta of its own.
    for raw, sent in zip(case["chunks"], got[1:], strict=False):
        chunk = json.loads(raw[1].split("\n\n")[0][6:]) if raw[1].startswith("data: {") else None
        text = (chunk or {}).get("choices", [{}])[0].get("delta", {}).get("content") if chunk else None
        if text:
            assert json.dumps(text)[1:-1].encode() in sent[0]["body"]
    events = sse_events(got)
    kinds = [k for k, _ in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert events[0][1]["message"]["model"] == "claude"
    text, _, usage = openai_deltas(case)
    assert "".join(e["delta"]["text"] for k, e in events if k == "content_block_delta") == text
    assert usage is not None
    delta = dict(events)["message_delta"]
    assert delta["usage"] == {
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
    }
    assert delta["delta"]["stop_reason"] == "max_tokens"


def test_recorded_tool_stream_becomes_a_tool_use_block() -> None:
    case = TOOLS["tools_named_stream"]
    t = anthropic.MessagesTranslator()
    t.request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "stream": True})
    events = sse_events(relay(t, 200, SSE, recorded_stream(case)))
    start = next(e for k, e in events if k == "content_block_start")
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["name"] == "plan_itinerary"
    assert start["content_block"]["id"].startswith("chatcmpl-tool-")
    partial = "".join(e["delta"]["partial_json"] for k, e in events if k == "content_block_delta")
    assert partial == openai_deltas(case)[1]
    # vLLM cut the call at max_tokens: the input is incomplete, and the stop reason says so.
    assert dict(events)["message_delta"]["delta"]["stop_reason"] == "max_tokens"


def test_recorded_whole_answers_become_messages() -> None:
    chat = CONTRACT["chat"]
    t = anthropic.MessagesTranslator()
    t.request({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    ((start, body),) = relay(t, 200, JSON, [chat["body"].encode()])[1:]
    message = json.loads(body["body"])
    recorded = json.loads(chat["body"])
    assert start["status"] == 200 and message["type"] == "message" and message["model"] == "claude"
    text = recorded["choices"][0]["message"]["content"]
    assert message["content"] == ([{"type": "text", "text": text}] if text else [])
    assert message["usage"]["output_tokens"] == recorded["usage"]["completion_tokens"]
    # vLLM's recorded forced calls ran out of tokens (random weights): the call of the recorded round trip,
    # in the recorded answer's envelope, is the finished one.
    answer = json.loads(TOOLS["tools_required"]["body"])
    calls = TOOLS["tool_result_roundtrip"]["request"]["body"]["messages"][2]["tool_calls"]
    answer["choices"][0]["message"].update(content=None, tool_calls=calls)
    answer["choices"][0]["finish_reason"] = "tool_calls"
    t = anthropic.MessagesTranslator()
    t.request({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    ((_, body),) = relay(t, 200, JSON, [orjson.dumps(answer)])[1:]
    message = json.loads(body["body"])
    assert message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "search_segments", "input": {"query": "台南"}}
    ]


@pytest.mark.parametrize("case", ["err_unknown_model", "err_bad_json", "err_max_tokens_too_big"])
def test_recorded_errors_in_each_apis_shape(case: str) -> None:
    rec = CONTRACT[case]
    message = json.loads(rec["body"])["error"]["message"]
    ((start, body),) = relay(anthropic.MessagesTranslator(), rec["status"], JSON, [rec["body"].encode()])[1:]
    assert start["status"] == rec["status"]
    kind = "not_found_error" if rec["status"] == 404 else "invalid_request_error"
    assert json.loads(body["body"]) == {"type": "error", "error": {"type": kind, "message": message}}
    ((start, body),) = relay(ollama.ChatTranslator(), rec["status"], JSON, [rec["body"].encode()])[1:]
    assert start["status"] == rec["status"] and json.loads(body["body"]) == {"error": message}


def test_error_event_mid_stream() -> None:
    t = anthropic.MessagesTranslator()
    first = (
        CONTRACT["chat_stream_plain"]["chunks"][0][1].split("\n\n")[0].encode() + b"\n\n"
    )  # the role chunk
    failure = OpenAIError("upstream stream ended early", status=502).to_sse() + b"data: [DONE]\n\n"
    events = sse_events(relay(t, 200, SSE, [first, failure]))
    assert [k for k, _ in events] == ["message_start", "error"]
    assert events[-1][1]["error"] == {"type": "api_error", "message": "upstream stream ended early"}
    lines = relay(ollama.ChatTranslator(), 200, SSE, [first, b": keep-alive\n\n", failure])
    body = b"".join(m["body"] for batch in lines[1:] for m in batch)
    assert body == b'{"error":"upstream stream ended early"}\n'


def test_a_waiting_stream_pings() -> None:
    """The gateway's keep-alive comment while a stream waits in the queue is Anthropic's `ping` event, and
    nothing on an NDJSON stream (it has no comments)."""
    keepalive = [b": keep-alive\n\n", b": keep-alive\n\n"]
    events = sse_events(relay(anthropic.MessagesTranslator(), 200, SSE, keepalive)[:2])
    assert events == [("ping", {"type": "ping"})]
    got = relay(ollama.ChatTranslator(), 200, SSE, keepalive)
    assert got[1] == []  # nothing sent for the comment, not even an empty body


def test_count_tokens_from_recorded_tokenize() -> None:
    rec = CONTRACT["tokenize_chat"]
    t = anthropic.CountTokensTranslator()
    req = t.request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert req.path == "/tokenize" and req.body["add_generation_prompt"] is True
    ((_, body),) = relay(t, 200, JSON, [rec["body"].encode()])[1:]
    assert json.loads(body["body"]) == {"input_tokens": json.loads(rec["body"])["count"]}


# ---- Ollama, answers ------------------------------------------------------------------------------------
def test_recorded_chat_stream_becomes_ndjson_lines() -> None:
    case = CONTRACT["chat_stream_usage"]
    t = ollama.ChatTranslator()
    t.request({"model": "qwen:7b", "messages": [{"role": "user", "content": "hi"}]})
    got = relay(t, 200, SSE, recorded_stream(case))
    assert dict(got[0][0]["headers"])[b"content-type"] == b"application/x-ndjson"
    lines = [json.loads(line) for batch in got[1:] for m in batch for line in m["body"].splitlines()]
    text, _, usage = openai_deltas(case)
    assert "".join(line["message"]["content"] for line in lines) == text
    assert all(line["model"] == "qwen:7b" for line in lines)
    assert [line["done"] for line in lines][-1] is True and not any(line["done"] for line in lines[:-1])
    assert usage is not None and lines[-1]["eval_count"] == usage["completion_tokens"]
    assert lines[-1]["prompt_eval_count"] == usage["prompt_tokens"] and lines[-1]["done_reason"] == "length"


def test_recorded_tool_stream_becomes_one_tool_calls_line() -> None:
    case = TOOLS["tools_required_stream"]
    t = ollama.ChatTranslator()
    t.request({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    got = relay(t, 200, SSE, recorded_stream(case))
    lines = [json.loads(line) for batch in got[1:] for m in batch for line in m["body"].splitlines()]
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1
    (call,) = with_calls[0]["message"]["tool_calls"]
    assert call["function"]["name"] == "search_segments" and isinstance(call["function"]["arguments"], dict)


def test_recorded_embeddings_become_ollamas() -> None:
    body = {"object": "list", "data": [{"index": 0, "embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": 3}}
    t = ollama.EmbedTranslator()
    t.request({"model": "e", "input": "x"})
    ((_, out),) = relay(t, 200, JSON, [orjson.dumps(body)])[1:]
    answer = json.loads(out["body"])
    assert answer["embeddings"] == [[0.1, 0.2]] and answer["prompt_eval_count"] == 3
    legacy = ollama.EmbedTranslator(legacy=True)
    legacy.request({"model": "e", "prompt": "x"})
    ((_, out),) = relay(legacy, 200, JSON, [orjson.dumps(body)])[1:]
    assert json.loads(out["body"]) == {"embedding": [0.1, 0.2]}


# ---- requests -------------------------------------------------------------------------------------------
def test_anthropic_request_of_the_recorded_tool_round_trip() -> None:
    """The recorded OpenAI round trip, written as an Anthropic client writes it, translates back to it."""
    rec = TOOLS["tool_result_roundtrip"]["request"]["body"]
    sys_msg, user, assistant, tool = rec["messages"]
    call = assistant["tool_calls"][0]
    body = {
        "model": "llama-8b", "max_tokens": 16, "system": [{"type": "text", "text": sys_msg["content"]}],
        "tools": [{"name": t["function"]["name"], "description": t["function"]["description"],
                   "input_schema": t["function"]["parameters"]} for t in rec["tools"]],
        "messages": [
            {"role": "user", "content": user["content"]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                 "input": json.loads(call["function"]["arguments"])}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call["id"],
                 "content": [{"type": "text", "text": tool["content"]}]}]},
        ],
    }  # fmt: skip
    out = anthropic.MessagesTranslator().request(body)
    assert out.path == "/v1/chat/completions" and not out.stream
    got = out.body
    assert got["tools"] == rec["tools"] and got["max_tokens"] == rec["max_tokens"]
    assert [m["role"] for m in got["messages"]] == [m["role"] for m in rec["messages"]]
    assert got["messages"][2]["tool_calls"][0]["id"] == call["id"]
    assert json.loads(got["messages"][2]["tool_calls"][0]["function"]["arguments"]) == json.loads(
        call["function"]["arguments"]
    )
    assert got["messages"][3] == tool and got["messages"][:2] == rec["messages"][:2]


def test_anthropic_request_fields() -> None:
    out = anthropic.MessagesTranslator().request(
        {
            "model": "m", "max_tokens": 9, "stop_sequences": ["END"], "temperature": 0.1, "top_k": 5,
            "stream": True, "tools": [{"name": "f", "input_schema": {"type": "object"}},
                                      {"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image",
                 "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]}],
        }
    ).body  # fmt: skip
    assert out["stop"] == ["END"] and out["temperature"] == 0.1 and out["top_k"] == 5
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert [t["function"]["name"] for t in out["tools"]] == ["f"]  # the server tool runs nowhere here
    assert out["tool_choice"] == "required" and out["parallel_tool_calls"] is False
    assert out["messages"][0]["content"][1] == {
        "type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}
    }  # fmt: skip


def test_ollama_request_of_the_recorded_tool_round_trip() -> None:
    rec = TOOLS["tool_result_roundtrip"]["request"]["body"]
    sys_msg, user, assistant, tool = rec["messages"]
    call = assistant["tool_calls"][0]["function"]
    body = {
        "model": "llama-8b", "tools": rec["tools"], "stream": False, "options": {"num_predict": 16},
        "messages": [
            sys_msg, user,
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": call["name"], "arguments": json.loads(call["arguments"])}}]},
            {"role": "tool", "content": tool["content"], "tool_name": call["name"]},
        ],
    }  # fmt: skip
    out = ollama.ChatTranslator().request(body)
    got = out.body
    assert not out.stream and got["max_tokens"] == 16 and got["tools"] == rec["tools"]
    made = got["messages"][2]["tool_calls"][0]
    assert made["function"]["name"] == call["name"]
    assert json.loads(made["function"]["arguments"]) == json.loads(call["arguments"])
    assert (
        got["messages"][3]["tool_call_id"] == made["id"] and got["messages"][3]["content"] == tool["content"]
    )


def test_ollama_options_and_formats() -> None:
    body = {
        "model": "m", "messages": [{"role": "user", "content": "x", "images": ["/9j/4AAQ"]}],
        "options": {"temperature": 0.3, "repeat_penalty": 1.1, "num_predict": -1, "num_ctx": 4096,
                    "stop": ["\n"]},
        "format": {"type": "object"},
    }  # fmt: skip
    out = ollama.ChatTranslator().request(body)
    assert out.stream  # Ollama's default
    got = out.body
    assert got["temperature"] == 0.3 and got["repetition_penalty"] == 1.1 and got["stop"] == ["\n"]
    assert "max_tokens" not in got and "num_ctx" not in got
    assert got["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "format", "schema": {"type": "object"}},
    }
    assert got["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert ollama.ChatTranslator().model_names("llama3:latest") == ("llama3:latest", "llama3")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
fields = st.sampled_from(
    ["model", "messages", "max_tokens", "system", "tools", "tool_choice", "stream", "stop_sequences",
     "options", "format", "prompt", "input", "images", "raw", "content", "role", "output_config", "suffix"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(fields, json_values, max_size=7), st.sampled_from(range(5)))
def test_any_body_translates_or_is_a_400(body: dict[str, Any], which: int) -> None:
    makers: list[Translator] = [
        anthropic.MessagesTranslator(), anthropic.CountTokensTranslator(), ollama.ChatTranslator(),
        ollama.GenerateTranslator(), ollama.EmbedTranslator(),
    ]  # fmt: skip
    try:
        out = makers[which].request(body)
    except OpenAIError as e:
        assert e.status == 400
        return
    orjson.dumps(out.body)  # what goes upstream is JSON
