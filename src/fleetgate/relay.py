"""The upstream relay: pick, send, retry before the first byte, stream whole SSE events through unchanged.

Retries go to another endpoint, only before the upstream's first byte, only on transport failures and 429,
502, 503, 504, with jittered backoff inside the request's deadline. After the first byte an upstream failure
ends the stream with an SSE error event and `[DONE]`, never a silent truncation. When the client leaves, the
relay task is cancelled and the upstream connection closed at once, so the engine aborts the request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from fleetgate.fleet.state import Endpoint
from fleetgate.protocol import SSE_DONE, OpenAIError, ServiceUnavailableError, error_from_body
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.router import PoolRouter

Send = Callable[[dict[str, Any]], Awaitable[None]]
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class GatewayTimeoutError(OpenAIError):
    status = 504
    type = "GatewayTimeoutError"


class BadGatewayError(OpenAIError):
    status = 502
    type = "BadGatewayError"


@dataclass(frozen=True)
class Timeouts:
    connect: float = 2.0
    first_byte_stream: float = 30.0
    first_byte_nonstream: float = 300.0
    idle_gap: float = 60.0
    total: float = 900.0


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    backoff_base: float = 0.05
    backoff_max: float = 1.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return float(min(self.backoff_max, self.backoff_base * 2.0**attempt) * rng.uniform(0.5, 1.5))


class RelayObserver:
    """Hooks for metrics and logs; the default does nothing."""

    def attempt_failed(self, endpoint: Endpoint, reason: str) -> None: ...
    def retried(self, call: Call) -> None: ...
    def first_event(self, call: Call, seconds: float) -> None: ...
    def event_gap(self, call: Call, seconds: float) -> None: ...
    def finished(self, call: Call, status: int, usage: dict[str, Any] | None) -> None: ...


@dataclass
class Call:
    """One client request on its way upstream; the body was validated and (if needed) rewritten once."""

    path: str  # upstream path after the endpoint's base URL, e.g. /v1/chat/completions
    body: bytes
    stream: bool
    route: RouteRequest
    request_id: str
    pool: str
    model: str  # the name the client asked for (an alias stays an alias here)
    started: float = field(default_factory=time.monotonic)
    endpoint: Endpoint | None = None
    attempts: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # extra response headers


@dataclass
class PoolRoute:
    """What the relay needs of a pool: its endpoints, how to pick, how long to wait, how often to retry."""

    name: str
    endpoints: list[Endpoint]
    router: PoolRouter
    timeouts: Timeouts
    retries: RetryPolicy
    debug_headers: bool = False


def _upstream_headers(endpoint: Endpoint, request_id: str) -> dict[str, str]:
    # The tenant's Authorization never travels upstream; the endpoint's own credential does.
    headers = {"content-type": "application/json", "x-request-id": request_id}
    if endpoint.api_key:
        headers["authorization"] = f"Bearer {endpoint.api_key}"
    return headers


def _response_headers(content_type: str, call: Call) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type.encode()),
        (b"x-request-id", call.request_id.encode()),
        *call.headers,
    ]


def _debug_headers(call: Call, route: PoolRoute, endpoint: Endpoint) -> list[tuple[bytes, bytes]]:
    hit = route.router.hit_ratio(call.route, endpoint)
    return [
        (b"x-fleetgate-endpoint", endpoint.name.encode()),
        (b"x-fleetgate-route", call.route.reason.encode()),
        (b"x-fleetgate-prefix-hit", f"{hit:.3f}".encode()),
    ]


class Relay:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        observer: RelayObserver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.session = session
        self.observer = observer or RelayObserver()
        self.rng = rng or random.Random()

    async def forward(self, call: Call, route: PoolRoute, send: Send) -> None:
        """Serve `call` through `send` (ASGI); raises OpenAIError only before any byte was sent."""
        deadline = call.started + route.timeouts.total
        tried: set[str] = set()
        last_error: OpenAIError | None = None
        for attempt in range(max(1, route.retries.attempts)):
            endpoint = route.router.pick(call.route, route.endpoints, frozenset(tried))
            if endpoint is None:
                break
            tried.add(endpoint.name)
            call.endpoint = endpoint
            call.attempts = attempt + 1
            if route.debug_headers:
                call.headers = _debug_headers(call, route, endpoint)
            outcome = await self._try(call, route, endpoint, send, deadline)
            if outcome is None:
                return
            last_error = outcome
            delay = route.retries.backoff(attempt, self.rng)
            if time.monotonic() + delay >= deadline:
                break
            self.observer.retried(call)
            await asyncio.sleep(delay)
        if last_error is not None:
            raise last_error
        raise ServiceUnavailableError(f"no endpoint of pool '{route.name}' can take the request now")

    async def _try(
        self, call: Call, route: PoolRoute, endpoint: Endpoint, send: Send, deadline: float
    ) -> OpenAIError | None:
        """One attempt: None when the client got an answer, or the retryable error that stopped it."""
        t = route.timeouts
        first_byte = t.first_byte_stream if call.stream else t.first_byte_nonstream
        limit = min(first_byte, max(0.001, deadline - time.monotonic()))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, connect=t.connect)
        endpoint.in_flight += 1
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                resp = await asyncio.wait_for(
                    self.session.post(
                        endpoint.url + call.path,
                        data=call.body,
                        headers=_upstream_headers(endpoint, call.request_id),
                        timeout=timeout,
                    ),
                    limit,
                )
            except TimeoutError:
                # A slow first byte may be a deep queue, not a dead server: it counts toward the breaker
                # like a 5xx instead of opening it at once (saturation keeps new work away meanwhile).
                endpoint.server_failed(504)
                self.observer.attempt_failed(endpoint, "first_byte_timeout")
                # The upstream may be working on it: never send it twice.
                raise GatewayTimeoutError(
                    f"upstream {endpoint.name} sent nothing within {limit:g} s"
                ) from None
            except aiohttp.ClientError as e:
                endpoint.transport_failed(f"{type(e).__name__}: {e}")
                self.observer.attempt_failed(endpoint, "transport")
                return BadGatewayError(f"upstream {endpoint.name} failed: {type(e).__name__}")
            route.router.prefill_done(call.route, endpoint)
            if resp.status in RETRY_STATUSES:
                body = await resp.read()
                if resp.status >= 500:
                    endpoint.server_failed(resp.status)
                self.observer.attempt_failed(endpoint, f"http_{resp.status}")
                return error_from_body(body, resp.status)
            if resp.status >= 500:
                endpoint.server_failed(resp.status)
            else:
                endpoint.succeeded()
            ctype = resp.headers.get("content-type", "application/json")
            if call.stream and resp.status == 200 and ctype.startswith("text/event-stream"):
                await self._stream(call, resp, send, deadline, t.idle_gap)
            else:
                await self._whole(call, resp, send, deadline)
            return None
        finally:
            endpoint.in_flight -= 1
            route.router.prefill_done(call.route, endpoint)
            if resp is not None:
                resp.close()

    async def _whole(self, call: Call, resp: aiohttp.ClientResponse, send: Send, deadline: float) -> None:
        try:
            body = await asyncio.wait_for(resp.read(), max(0.001, deadline - time.monotonic()))
        except (TimeoutError, aiohttp.ClientError) as e:
            if call.endpoint is not None:
                call.endpoint.transport_failed(type(e).__name__)
            raise GatewayTimeoutError("the upstream answer did not complete in time") from None
        ctype = resp.headers.get("content-type", "application/json")
        await send(
            {
                "type": "http.response.start",
                "status": resp.status,
                "headers": _response_headers(ctype, call),
            }
        )
        await send({"type": "http.response.body", "body": body})
        usage = None
        if resp.status == 200 and b'"usage"' in body:
            try:
                usage = orjson.loads(body).get("usage")
            except (orjson.JSONDecodeError, AttributeError):
                usage = None
        self.observer.finished(call, resp.status, usage)

    async def _stream(
        self, call: Call, resp: aiohttp.ClientResponse, send: Send, deadline: float, idle_gap: float
    ) -> None:
        headers = _response_headers("text/event-stream; charset=utf-8", call)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        buf = b""
        last = time.monotonic()
        first = True
        usage_event = b""
        reader = resp.content
        try:
            while True:
                wait = min(idle_gap, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(reader.readany(), wait)
                if not chunk:
                    break
                buf += chunk
                cut = buf.rfind(b"\n\n")
                if cut < 0:
                    continue
                out, buf = buf[: cut + 2], buf[cut + 2 :]
                now = time.monotonic()
                if first:
                    self.observer.first_event(call, now - call.started)
                    first = False
                else:
                    self.observer.event_gap(call, now - last)
                last = now
                if b'"usage"' in out:
                    usage_event = out
                await send({"type": "http.response.body", "body": out, "more_body": True})
        except (TimeoutError, aiohttp.ClientError) as e:
            reason = "idle_timeout" if isinstance(e, TimeoutError) else "transport"
            if call.endpoint is not None:
                call.endpoint.transport_failed(f"stream broke: {type(e).__name__}")
                self.observer.attempt_failed(call.endpoint, f"stream_{reason}")
            error = BadGatewayError(f"upstream stream ended early ({reason})")
            await send({"type": "http.response.body", "body": error.to_sse() + SSE_DONE, "more_body": False})
            self.observer.finished(call, 502, None)
            return
        if buf.strip():
            await send({"type": "http.response.body", "body": buf, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.observer.finished(call, 200, _usage_of(usage_event))


def _usage_of(events: bytes) -> dict[str, Any] | None:
    """The usage object of the last event that carries one (vLLM's final chunk), parsed only then."""
    if not events:
        return None
    for event in reversed(events.split(b"\n\n")):
        if b'"usage"' in event and event.startswith(b"data: {"):
            try:
                usage = orjson.loads(event[6:]).get("usage")
            except orjson.JSONDecodeError:
                return None
            return usage if isinstance(usage, dict) else None
    return None
