"""The ASGI plumbing every route shares: reading a bounded body, answering with JSON or an OpenAI error, the
request id, and noticing a client that left."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fleetgate.protocol import OpenAIError, PayloadTooLargeError

if TYPE_CHECKING:
    from fleetgate.admission.auth import Tenant
    from fleetgate.api.translation import Translator
    from fleetgate.relay import Call
    from fleetgate.tenancy.limiter import Ticket

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Seconds a client is told to wait when nothing can take its request.
RETRY_AFTER = 1


# The public listener's protocol puts the connection's abort() here (api/http.py).
ABORT_KEY = "fleetgate.abort"


class Exchange:
    """One request and its answer, as the route handlers and the access log see it. Wraps `send` to know
    what the client got: the status, whether the response started and finished."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.client_send = send  # the server's own, under whatever wraps it
        self.path: str = scope["path"]
        self.method: str = scope["method"]
        self.headers: Mapping[bytes, bytes] = dict(scope["headers"])
        self.request_id = request_id(self.headers)
        self.arrived = time.monotonic()
        self.route = "unknown"  # a route of the table, never a client's path (a metric label)
        self.tenant = "none"  # a configured key name, "anonymous" (open gateway) or "none"
        self.model = ""  # a name the gateway serves, never an unknown one (a metric label)
        self.pool = ""
        self.status = 0  # of the answer's start
        self.gone = False  # the client left, or stopped reading
        self.started = False
        self.finished = False
        self.call: Call | None = None
        self.serving: asyncio.Future[None] | None = None  # the relay's task
        self.handler: asyncio.Task[Any] | None = None  # the task answering it
        self.ended_by: OpenAIError | None = None  # set when the gateway itself ends the exchange
        self.identity: Tenant | None = None  # who called (the key presented)
        self.ticket: Ticket | None = None  # what admission charged to its limits, settled at the end
        self.prompt_bytes = 0  # the prompt's size, for token estimates
        self.max_output = 0  # output tokens the request may produce (max_tokens x n)
        self.cache = ""  # the response cache's verdict: HIT, MISS, or "" when not asked
        self.cache_key: str | None = None
        # Set on the routes of another API (api/translation.py): what the client gets passes through it.
        self.translator: Translator | None = None

    def translate(self, translator: Translator, send: Send) -> None:
        """Answer in another API's shape: `send` (a TranslatingSend around the one given) goes under every
        message, so the status and progress recorded here stay the OpenAI answer's."""
        self.translator = translator
        self._send = send

    def pass_through(self, send: Send) -> None:
        """Answer another API's request with the upstream's own answer in that API (a passed-through
        `/v1/messages`): `send` wraps `client_send`, and there is nothing to translate."""
        self.translator = None
        self._send = send

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if not self.status:
                self.status = int(message["status"])
        elif not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    @property
    def outcome(self) -> int:
        """The status the client got: 499 if it left first; a stream's own end (the error event that closed
        it) over the 200 it started with."""
        if self.gone:
            return 499
        if self.call is not None and self.call.status:
            return self.call.status
        return self.status

    def end(self, error: OpenAIError) -> None:
        """Stop serving it now (the drain's deadline): its stream gets `error` as a final event."""
        if self.serving is not None and not self.serving.done():
            self.ended_by = error
            self.serving.cancel()

    def abort(self) -> None:
        """Drop the connection (a client that stopped reading); a no-op where the server offers no way."""
        abort = self.scope.get(ABORT_KEY)
        if callable(abort):
            abort()


class ClientGone(Exception):
    """The client closed the connection before its request was read."""


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes", param="body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def reply(
    send: Send, status: int, body: bytes, request_id: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def error(send: Send, e: OpenAIError, request_id: str) -> None:
    """The error as an HTTP answer: its status, OpenAI's shape, and Retry-After on a 429 or 503."""
    extra = list(e.headers)
    if e.status in (429, 503):
        extra.append((b"retry-after", str(e.retry_after or RETRY_AFTER).encode()))
    await reply(send, e.status, e.to_json(), request_id, extra)


def request_id(headers: Mapping[bytes, bytes]) -> str:
    given = headers.get(b"x-request-id", b"").decode(errors="replace").strip()
    return given[:128] if given else os.urandom(12).hex()


async def disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
