"""The ASGI plumbing every route shares: reading a bounded body, answering with JSON or an OpenAI error, the
request id, and noticing a client that left."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fleetgate.protocol import OpenAIError, PayloadTooLargeError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Seconds a client is told to wait when nothing can take its request.
RETRY_AFTER = 1


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
