"""`/v1/messages` passed through to upstreams that serve it (a pool with `anthropic: passthrough`).

The body goes upstream as the client sent it (only an alias becomes the served name); the gateway checks
what it must before any byte leaves (model, messages, max_tokens against the pool's cap, stream) and reads the
usage from Anthropic's fields for accounting (usage.py). The answer comes back byte for byte, upstream errors
in Anthropic's shape included. What the gateway says itself, which the rest of it says in OpenAI's shape, is
put in Anthropic's here (`PassthroughSend`): an error answer, a stream's keep-alive (a `ping` event), and the
end of a stream it cuts (drain, stall, timeout, upstream failure): an `error` event, never `[DONE]`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from fleetgate.admission.limits import RequestLimits, apply_token_limits
from fleetgate.api.anthropic.errors import error_body, error_type
from fleetgate.api.anthropic.request import chat_messages, chat_tools
from fleetgate.api.anthropic.stream import sse
from fleetgate.api.downstream import KEEPALIVE
from fleetgate.api.translation import error_parts, expect
from fleetgate.protocol import SSE_DONE, BadRequestError, OpenAIError, lax_bool, lax_int

__all__ = ["PassthroughSend", "chat_view", "check"]

Send = Callable[[dict[str, Any]], Awaitable[None]]


def check(body: dict[str, Any], limits: RequestLimits, count_tokens: bool) -> tuple[bool, int]:
    """What the gateway needs of a Messages body (400s in Anthropic's wording): whether it streams, and the
    output tokens it may produce. The upstream checks the rest, and answers in its own shape."""
    messages = body.get("messages")
    if messages is None:
        raise BadRequestError("messages: Field required", param="messages")
    expect(messages, list, "messages")
    if count_tokens:
        return False, 0
    if body.get("max_tokens") is None:
        raise BadRequestError("max_tokens: Field required", param="max_tokens")
    apply_token_limits(body, limits)  # given, so never set: checked against the cap
    stream = lax_bool(body.get("stream"), "stream")
    return stream, lax_int(body["max_tokens"], "max_tokens") or 0


def chat_view(body: dict[str, Any]) -> dict[str, Any] | None:
    """The conversation as chat messages, for prefix and session routing only; None when its shape is not
    one translation knows. System blocks are joined as vLLM's own /v1/messages joins them (no separator), so
    the keys follow the prompt the upstream renders."""
    try:
        view: dict[str, Any] = {
            "messages": chat_messages(body.get("system"), body.get("messages"), joiner="")
        }
        tools = chat_tools(body.get("tools"))
    except (OpenAIError, TypeError, ValueError, KeyError, AttributeError):
        return None
    if tools:
        view["tools"] = tools
    return view


class PassthroughSend:
    """An ASGI `send` for a passed-through Messages request: the upstream's Anthropic answer goes on as it
    is, the gateway's own errors and stream endings in Anthropic's shape."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._error_start: dict[str, Any] | None = None  # a non-200 answer's start, held for its body
        self._held: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            if message["status"] == 200:
                await self._send(message)
            else:
                self._error_start = message
            return
        body: bytes = message.get("body", b"")
        if self._error_start is not None:
            self._held.append(body)
            if message.get("more_body", False):
                return
            await self._error(self._error_start, b"".join(self._held))
            return
        if body == KEEPALIVE:
            body = sse("ping", {})
        elif body.endswith(SSE_DONE):
            body = _ending(body)
        await self._send({**message, "body": body})

    async def _error(self, start: dict[str, Any], body: bytes) -> None:
        status = int(start["status"])
        if not _is_anthropic_error(body):
            body = error_body(status, error_parts(status, body)[0])
        headers = [
            (k, v) for k, v in start.get("headers") or () if k not in (b"content-type", b"content-length")
        ]
        headers.append((b"content-type", b"application/json"))
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


def _is_anthropic_error(body: bytes) -> bool:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("type") == "error" and isinstance(doc.get("error"), dict)


def _ending(body: bytes) -> bytes:
    """The gateway's end of a stream (`data: {"error": ...}` and `[DONE]`, api/downstream.py and the relay) as
    Anthropic's `error` event; the upstream's own events before it are left as they are."""
    out: list[bytes] = []
    for event in body.split(b"\n\n"):
        if not event or event == SSE_DONE[:-2]:
            continue
        if event.startswith(b"data: {") and b'"error"' in event:
            try:
                err = orjson.loads(event[6:]).get("error")
            except (orjson.JSONDecodeError, AttributeError):
                err = None
            if isinstance(err, dict) and "message" in err:
                code = err.get("code")
                status = code if isinstance(code, int) and 400 <= code < 600 else 500
                out.append(
                    sse("error", {"error": {"type": error_type(status), "message": str(err["message"])}})
                )
                continue
        out.append(event + b"\n\n")
    return b"".join(out)
