"""The pieces of the Messages pass-through on their own: what the gateway says itself goes out in Anthropic's
shape, upstream bytes untouched; usage read from Anthropic's fields."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from fleetgate.api.anthropic.passthrough import PassthroughSend, chat_view
from fleetgate.api.anthropic.request import to_chat
from fleetgate.api.anthropic.usage import AnthropicUsage
from fleetgate.api.downstream import Downstream
from fleetgate.protocol import SSE_DONE, GatewayTimeoutError, ServiceUnavailableError
from fleetgate.sim.messages_request import MessagesRequest, chat_request

UPSTREAM_EVENTS = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"chatcmpl-1","content":[],'
    b'"model":"m","usage":{"input_tokens":7,"output_tokens":0}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","content_block":{"type":"text",'
    b'"text":""},"index":0}\n\n'
)


class Client:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.pinged_twice = asyncio.Event()

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if len(self.messages) >= 3:  # the start and two keep-alives
            self.pinged_twice.set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


def events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for event in body.split(b"\n\n"):
        if event:
            kind, data = event.split(b"\n", 1)
            out.append((kind.removeprefix(b"event: ").decode(), orjson.loads(data.removeprefix(b"data: "))))
    return out


async def test_a_waiting_stream_pings_and_a_cut_one_ends_with_an_error_event() -> None:
    client = Client()
    down = Downstream(PassthroughSend(client), "rid", after=0.01)
    down.hold()
    await client.pinged_twice.wait()
    await down.send({"type": "http.response.start", "status": 200,
                     "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
    await down.send({"type": "http.response.body", "body": UPSTREAM_EVENTS, "more_body": True})
    # The drain's deadline (or a stall, a timeout, an upstream failure) ends it as the gateway ends streams.
    await down.fail(ServiceUnavailableError("the gateway shut down before this request finished; retry"))
    assert client.messages[0]["status"] == 200
    assert UPSTREAM_EVENTS in client.body  # the upstream's bytes as they came
    got = events(client.body)
    assert got[0] == ("ping", {"type": "ping"}) and got[1] == ("ping", {"type": "ping"})
    assert [k for k, _ in got if k != "ping"] == ["message_start", "content_block_start", "error"]
    assert got[-1][1] == {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "message": "the gateway shut down before this request finished; retry",
        },
    }
    assert SSE_DONE not in client.body and client.messages[-1]["more_body"] is False


async def test_errors_before_the_answer_are_made_anthropic_and_upstream_ones_kept() -> None:
    ours = Client()
    send = PassthroughSend(ours)
    e = GatewayTimeoutError("upstream sent nothing within 0.3 s")
    await send(
        {"type": "http.response.start", "status": 504, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": e.to_json()})
    assert ours.messages[0]["status"] == 504
    assert orjson.loads(ours.body) == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream sent nothing within 0.3 s"},
    }
    theirs = Client()
    send = PassthroughSend(theirs)
    upstream = b'{"type":"error","error":{"type":"NotFoundError","message":"no such model"}}'
    await send(
        {"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": upstream[:20], "more_body": True})
    await send({"type": "http.response.body", "body": upstream[20:]})
    assert theirs.body == upstream and theirs.messages[0]["status"] == 404


def test_usage_counts_cached_prompt_tokens_apart() -> None:
    shape = AnthropicUsage()
    whole = (
        b'{"usage": {"input_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20,'
    )
    whole += b' "output_tokens": 9}}'
    assert shape.whole(whole) == {
        "prompt_tokens": 125,
        "completion_tokens": 9,
        "total_tokens": 134,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    # Anthropic's own stream: the prompt in message_start, only the output in message_delta.
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":12,'
        b'"cache_read_input_tokens":null,"output_tokens":1}}}\n\n'
    )
    end = (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":15}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    usage = shape.stream(start, end)
    assert usage is not None and (usage["prompt_tokens"], usage["completion_tokens"]) == (12, 15)
    assert shape.stream(b"", b"") is None and shape.whole(b"not json") is None


def claude_code(billing: str) -> dict[str, Any]:
    """A body shaped as Claude Code sends it: the system prompt in blocks, the first a per-request hash."""
    return {
        "model": "m",
        "max_tokens": 64,
        "system": [
            {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.3; cch={billing};"},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI."},
            {"type": "text", "text": "Use the tools available to you to help the user."},
        ],
        "messages": [{"role": "user", "content": "Fix the failing test."}],
    }


def test_the_billing_header_never_changes_the_prompt_prefix() -> None:
    a, b = claude_code("93b1f"), claude_code("0c4d2")
    # Pass-through hashes what the upstream renders: vLLM drops the header and joins the rest as is.
    view = chat_view(a)
    assert view is not None and view == chat_view(b)
    upstream = chat_request(MessagesRequest.model_validate(a))["messages"]
    assert view["messages"] == upstream
    # Translated, the header does not reach the engine either (its prefix cache would miss every time).
    assert to_chat(a)["messages"] == to_chat(b)["messages"]
    system = to_chat(a)["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You are Claude Code")
