"""The public listener's HTTP/1.1 protocol: uvicorn's httptools protocol with the bounds a server facing the
internet needs and uvicorn does not set.

- A request's headers must arrive within `header_timeout` (from the connection's start, or from the first byte
  of a later request on a kept-alive connection) and stay under `max_header_bytes`: 408 or 431 otherwise.
- Its body must arrive within `body_timeout` of its headers: 408 otherwise.
- An idle kept-alive connection closes after `idle_timeout` (uvicorn's keep-alive timer).
- Past `max_connections` open connections a new one is answered 503 and closed at once, so a flood of idle
  sockets cannot take the file descriptors the admin port and the upstream connections need.

The app may drop a connection (a client that stopped reading) through `scope[ABORT_KEY]`.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetgate.api.asgi import ABORT_KEY
from fleetgate.protocol import OpenAIError

__all__ = ["ConnectionLimits", "guarded_protocol", "raise_fd_limit"]

# File descriptors kept back from public connections: the admin port, upstream connections, logs, ZMQ.
FD_RESERVE = 128
# Seconds a refused connection is kept half-closed so the client can read its answer.
LINGER = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    refused: Callable[[str], None] = lambda reason: None  # counts each refusal by reason


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (a gateway holds two sockets per stream); returns
    the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections(fd_limit: int) -> int:
    """Each public connection may hold an upstream connection too: half of what the reserve leaves."""
    return max(16, (fd_limit - FD_RESERVE) // 2)


def _error_response(status: int, reason: str, error: OpenAIError) -> bytes:
    body = error.to_json()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class _GuardedProtocol(HttpToolsProtocol):
    limits: ConnectionLimits  # set by guarded_protocol()

    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _in_headers = True
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            error = OpenAIError("too many open connections; retry shortly", status=503)
            self._refuse("too_many_connections", _error_response(503, "Service Unavailable", error))
            return
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        counting = self._in_headers
        if counting:
            self._header_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a read that ends the headers also carries body bytes, which are not headers.
        if counting and self._in_headers and self._header_bytes > self.limits.max_header_bytes:
            error = OpenAIError(
                f"request headers are larger than {self.limits.max_header_bytes} bytes", status=431
            )
            self._refuse("headers_too_large", _error_response(431, "Request Header Fields Too Large", error))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self.scope[ABORT_KEY] = self.transport.abort  # type: ignore[literal-required]
        super().on_headers_complete()
        if self.parser is not None and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_late)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def _headers_late(self) -> None:
        self._header_timer = None
        error = OpenAIError(f"request headers took longer than {self.limits.header_timeout:g} s", status=408)
        self._refuse("header_timeout", _error_response(408, "Request Timeout", error))

    def _body_late(self) -> None:
        self._body_timer = None
        if self.cycle is not None and self.cycle.response_started:
            self.transport.abort()  # the app has answered already; just drop what never came
            return
        error = OpenAIError(f"request body took longer than {self.limits.body_timeout:g} s", status=408)
        self._refuse("body_timeout", _error_response(408, "Request Timeout", error))

    def _refuse(self, reason: str, response: bytes) -> None:
        self._cancel_timers()
        self.limits.refused(reason)
        if self.transport.is_closing():
            return
        self.transport.write(response)
        # A lingering close: closing with unread bytes in the socket sends a reset, and the client's kernel
        # then drops the answer it has not read yet. Stop writing, discard what still comes, close soon.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None


def guarded_protocol(limits: ConnectionLimits) -> type[Any]:
    """uvicorn's `http=` class for the public listener."""
    return type("GuardedHttpToolsProtocol", (_GuardedProtocol,), {"limits": limits})
