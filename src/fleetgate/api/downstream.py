"""The client's side of a streaming request that may wait: SSE keep-alive comments while it does.

Once a request has waited `after` seconds (in the pool's queue, or for a slow first token) the response is
started as a 200 event stream and a comment (`: keep-alive`) goes out every `after` seconds, so proxies and
clients do not give up. From then on the status is spent: whatever the relay sends is made to continue that
stream, and an error, upstream or ours, becomes a final SSE error event and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from fleetgate.protocol import SSE_DONE, OpenAIError, error_from_body

__all__ = ["Downstream"]

Send = Callable[[dict[str, Any]], Awaitable[None]]
KEEPALIVE = b": keep-alive\n\n"


class Downstream:
    def __init__(self, send: Send, request_id: str, after: float) -> None:
        self._send = send
        self.request_id = request_id
        self.after = after
        self.started = False  # by us: the client has a 200 event stream
        self._beat: asyncio.Task[None] | None = None
        self._relayed_stream = True  # what the relay started is an event stream we can pass through
        self._held: list[bytes] = []  # a non-stream answer arriving after we started: made an error event
        self._status = 200

    def hold(self) -> None:
        self._beat = asyncio.create_task(self._keepalive())

    async def release(self) -> None:
        """Stop the comments (the relay is about to send)."""
        if self._beat is not None:
            beat, self._beat = self._beat, None
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _keepalive(self) -> None:
        await asyncio.sleep(self.after)
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"x-request-id", self.request_id.encode()),
        ]
        # Started before the await: once this send begins, the status is spent even if we are cancelled.
        self.started = True
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        while True:
            await self._send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
            await asyncio.sleep(self.after)

    async def send(self, message: dict[str, Any]) -> None:
        """The relay's `send`."""
        if self._beat is not None:
            await self.release()
        if not self.started:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            self._status = int(message["status"])
            ctype = dict(message.get("headers") or ()).get(b"content-type", b"")
            self._relayed_stream = self._status == 200 and ctype.startswith(b"text/event-stream")
            return
        if self._relayed_stream:
            await self._send(message)
            return
        self._held.append(message.get("body", b""))
        if not message.get("more_body", False):
            await self.fail(error_from_body(b"".join(self._held), self._status))

    async def fail(self, error: OpenAIError) -> None:
        """End a started stream with `error`; the caller answers with a status when nothing was started."""
        await self.release()
        body = error.to_sse() + SSE_DONE
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
