"""Other APIs at the edge: a request in another API's shape becomes one OpenAI request, and the OpenAI answer
goes back in that API's shape.

The core (admission, flow queue, picker, relay, accounting) only ever sees the OpenAI request a `Translator`
made. Its answer comes back through `TranslatingSend`, a `send` wrapper under the exchange: every message a
route writes, whoever writes it (the relay, the keep-alive, an error before or during the stream), is turned
into the other API's shape there. Streams are translated event by event as they arrive, with nothing held
back, so a translated stream's first token leaves as soon as the OpenAI one would. A whole (non-streamed)
answer is one JSON body and is translated at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from fleetgate.protocol import BadRequestError

__all__ = [
    "OpenAIRequest",
    "TranslatingSend",
    "Translator",
    "UpstreamShape",
    "error_parts",
    "expect",
    "malformed",
]

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class OpenAIRequest:
    """What a translated request becomes: an OpenAI route of the gateway and its body."""

    path: str  # e.g. /v1/chat/completions
    body: dict[str, Any]
    stream: bool
    # Answered by the translator itself (no upstream call), once the model is known to exist.
    local: bytes | None = None


class UpstreamShape(Exception):
    """A 200 answer from upstream that cannot be translated (not JSON, fields missing): a 502."""


class Translator(Protocol):
    """One request of another API, both ways. A new one per request: it keeps what the answer needs (the
    model name the client used, its stop sequences) and a stream's state."""

    answer_type: bytes  # content type of a whole answer
    stream_type: bytes  # content type of a translated stream

    def request(self, body: dict[str, Any]) -> OpenAIRequest:
        """The OpenAI request; raises an OpenAIError (shown in the API's shape) for input it cannot take."""
        ...

    def model_names(self, model: str) -> tuple[str, ...]:
        """The names to look a requested model up by, in order."""
        ...

    def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        """A whole OpenAI answer (an error when status is not 200) in the API's shape, and its status."""
        ...

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """One OpenAI stream chunk as the API's stream bytes (may be empty)."""
        ...

    def failed(self, status: int, message: str, kind: str) -> bytes:
        """The stream's error event: the stream ends after it."""
        ...

    def done(self) -> bytes:
        """The stream's end (OpenAI's `[DONE]`, or the upstream closing without it)."""
        ...

    def keepalive(self) -> bytes:
        """What a waiting stream sends instead of `: keep-alive` (may be empty)."""
        ...


def expect(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    """`value` if it has the type, else a 400 naming the field."""
    if not isinstance(value, kind):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadRequestError(f"`{name}` must be {_ARTICLES.get(names, 'a ' + names)}", param=name)
    return value


_ARTICLES = {"dict": "an object", "list": "a list", "str": "a string", "int": "an integer"}


def malformed(e: Exception) -> BadRequestError:
    """A body whose shape made translation fail in a way no check named: a 400, never a 500."""
    return BadRequestError(f"the request body has an unexpected shape ({type(e).__name__}: {e})"[:400])


def error_parts(status: int, body: bytes) -> tuple[str, str]:
    """An OpenAI error body's message and type (or ones named after the status)."""
    message, kind = f"upstream answered {status}", "error"
    try:
        err = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return message, kind
    if isinstance(err, dict):
        return str(err.get("message", message)), str(err.get("type", kind))
    if isinstance(err, str):  # vLLM's pooling routes and some proxies answer {"error": "text"}
        return err, kind
    return message, kind


class TranslatingSend:
    """An ASGI `send` that passes OpenAI answers on in another API's shape."""

    def __init__(self, send: Send, translator: Translator) -> None:
        self._send = send
        self.t = translator
        self._start: dict[str, Any] | None = None  # a whole answer's start, held until its body is in
        self._held: list[bytes] = []
        self._streaming = False
        self._buf = b""
        self._ended = False  # the translator's end went out (after [DONE] or an error)

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers") or () if k != b"content-type"]
            ctype = dict(message.get("headers") or ()).get(b"content-type", b"")
            self._streaming = message["status"] == 200 and ctype.startswith(b"text/event-stream")
            if self._streaming:
                headers.append((b"content-type", self.t.stream_type))
                await self._send({**message, "headers": headers})
            else:
                headers.append((b"content-type", self.t.answer_type))
                self._start = {**message, "headers": headers}
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if not self._streaming:
            self._held.append(body)
            if more:
                return
            assert self._start is not None
            status, out = self.t.answer(int(self._start["status"]), b"".join(self._held))
            self._held = []
            await self._send({**self._start, "status": status})
            await self._send({"type": "http.response.body", "body": out})
            return
        out = self._events(body)
        if not more:
            if self._buf.strip():
                out += self._events(b"\n\n")
            if not self._ended:
                self._ended = True
                out += self.t.done()
        if out or not more:
            await self._send({"type": "http.response.body", "body": out, "more_body": more})

    def _events(self, data: bytes) -> bytes:
        """Whole SSE events of `data` (and what was left of the last call) as the API's bytes."""
        buf = self._buf + data if self._buf else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._buf = buf
            return b""
        self._buf = buf[cut + 2 :]
        out: list[bytes] = []
        for event in buf[:cut].split(b"\n\n"):
            if not event or self._ended:
                continue
            if event.startswith(b":"):
                out.append(self.t.keepalive())
                continue
            # An event may carry `event:` and `id:` lines; only its data matters here.
            payload = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
            if payload == b"[DONE]":
                self._ended = True
                out.append(self.t.done())
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue  # not an event a client of the other API could use
            if not isinstance(chunk, dict):
                continue
            err = chunk.get("error")
            if err is not None and "choices" not in chunk:
                message, kind = error_parts(int(_code(err)), payload)
                self._ended = True
                out.append(self.t.failed(int(_code(err)), message, kind))
                continue
            out.append(self.t.chunk(chunk))
        return b"".join(out)


def _code(err: Any) -> int:
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, int) and 400 <= code < 600 else 500
