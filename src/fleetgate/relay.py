"""The upstream relay: pick, send, retry before the first byte, stream whole SSE events through unchanged.

Retries go to another endpoint, only before the upstream's first byte, only on transport failures and 429,
502, 503, 504, with jittered backoff inside the request's deadline. A request still waiting for its first byte
from an endpoint that has gone silent (no probe, scrape or byte answered within `stall_after`: a frozen
process or a hung GPU) is abandoned and retried elsewhere; a slow first byte from an endpoint that is alive is
a deep queue, not a fault, and is waited for. After the first byte an upstream failure ends the stream with an
SSE error event and `[DONE]`, never a silent truncation.

No `asyncio.wait_for` around reads: on Python 3.11 it can swallow the cancellation that a client's disconnect
sends (CPython gh-86296), leaving the engine generating for nobody. The first byte is awaited with
`asyncio.wait` (which never swallows a cancellation) and a stream is read under one `asyncio.timeout` whose
deadline moves with each event. A client that stops reading is its own fault: `ClientStalled` ends its
exchange and nobody upstream is blamed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from fleetgate.fleet.state import Endpoint
from fleetgate.protocol import (
    SSE_DONE,
    BadGatewayError,
    GatewayTimeoutError,
    OpenAIError,
    ServiceUnavailableError,
    error_from_body,
    is_openai_error,
)
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.router import Lease, PoolRouter

Send = Callable[[dict[str, Any]], Awaitable[None]]
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ClientStalled(Exception):
    """The client stopped reading its stream until the request's deadline passed."""


@dataclass(frozen=True)
class Timeouts:
    """A pool's `timeouts:` (defaults in config/pool.py), in seconds."""

    connect: float
    first_byte_stream: float
    first_byte_nonstream: float
    idle_gap: float
    total: float
    stall_after: float  # an endpoint without any sign of life this long counts as frozen


@dataclass(frozen=True)
class RetryPolicy:
    """A pool's `retries:` (defaults in config/pool.py)."""

    attempts: int
    backoff_base: float
    backoff_max: float

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return float(min(self.backoff_max, self.backoff_base * 2.0**attempt) * rng.uniform(0.5, 1.5))


class UsageShape(Protocol):
    """How an API other than OpenAI's reports usage (a passed-through Anthropic route); what it returns is
    OpenAI's usage object (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`),
    which the accounting reads."""

    def whole(self, body: bytes) -> dict[str, Any] | None:
        """The usage of a whole (non-streamed) 200 answer."""
        ...

    def stream(self, first: bytes, last: bytes) -> dict[str, Any] | None:
        """The usage of a stream, from the first and the last relayed chunk that mention it."""
        ...


class RelayObserver:
    """Hooks for metrics; the default does nothing."""

    def attempt_failed(self, endpoint: Endpoint, reason: str) -> None: ...
    def retried(self, call: Call) -> None: ...
    def first_event(self, call: Call, seconds: float) -> None: ...
    def event_gap(self, call: Call, seconds: float) -> None: ...


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
    # The client did not ask for usage; it was asked for upstream (to count the tokens) and its event is
    # not passed on.
    strip_usage: bool = False
    endpoint: Endpoint | None = None
    attempts: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # debug response headers
    # Response headers the gateway adds (x-ratelimit-*, x-fleetgate-cache), whatever the endpoint.
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    events: int = 0  # stream events relayed: an aborted stream's output estimate
    # What the client got: the upstream's status, or the status of the error that ended its stream.
    status: int = 0
    usage: dict[str, Any] | None = None
    # Set where the answer is not OpenAI's (a passed-through /v1/messages): how to read its usage.
    usage_shape: UsageShape | None = None


@dataclass
class PoolRoute:
    """What the relay needs of a pool: its endpoints, how to pick, how long to wait, how often to retry."""

    name: str
    endpoints: list[Endpoint]
    router: PoolRouter
    timeouts: Timeouts
    retries: RetryPolicy
    debug_headers: bool = False


class _Lost(Exception):
    """The endpoint went silent while the request waited for its first byte (it never started there)."""


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
        *call.extra_headers,
        *call.headers,
    ]


def _debug_headers(lease: Lease) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-fleetgate-endpoint", lease.endpoint.name.encode()),
        (b"x-fleetgate-route", lease.reason.encode()),
        (b"x-fleetgate-prefix-hit", f"{lease.hit_ratio:.3f}".encode()),
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
        """Serve `call` through `send` (ASGI); raises OpenAIError only before any byte was sent, and
        ClientStalled when the client stopped reading."""
        deadline = call.started + route.timeouts.total
        tried: set[str] = set()
        last_error: OpenAIError | None = None
        for attempt in range(max(1, route.retries.attempts)):
            lease = route.router.pick(call.route, route.endpoints, frozenset(tried))
            if lease is None:
                break
            tried.add(lease.endpoint.name)
            call.endpoint = lease.endpoint
            call.attempts = attempt + 1
            if route.debug_headers:
                call.headers = _debug_headers(lease)
            try:
                outcome = await self._try(call, route, lease, send, deadline)
            finally:
                lease.release()
            if outcome is None:
                route.router.observed(call.route, call.usage)
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
        self, call: Call, route: PoolRoute, lease: Lease, send: Send, deadline: float
    ) -> OpenAIError | None:
        """One attempt on the leased endpoint: None when the client got an answer, or the retryable error
        that stopped it. The caller releases the lease."""
        t = route.timeouts
        endpoint = lease.endpoint
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                resp = await self._first_byte(call, endpoint, t, deadline)
            except _Lost:
                self.observer.attempt_failed(endpoint, "frozen")
                return ServiceUnavailableError(
                    f"upstream {endpoint.name} stopped answering before it started the request"
                )
            except TimeoutError:
                # A slow first byte from a live endpoint is a deep queue, not a fault: no breaker count.
                # The upstream may be working on it: never send it twice.
                self.observer.attempt_failed(endpoint, "first_byte_timeout")
                limit = t.first_byte_stream if call.stream else t.first_byte_nonstream
                which = "first_byte_stream" if call.stream else "first_byte_nonstream"
                raise GatewayTimeoutError(
                    f"upstream {endpoint.name} sent nothing within {min(limit, t.total):g} s "
                    f"(timeouts.{which} or timeouts.total)"
                ) from None
            except aiohttp.ClientError as e:
                endpoint.transport_failed(f"{type(e).__name__}: {e}")
                self.observer.attempt_failed(endpoint, "transport")
                return BadGatewayError(f"upstream {endpoint.name} failed: {type(e).__name__}")
            lease.started()
            endpoint.answered_at = time.monotonic()
            if resp.status in RETRY_STATUSES:
                body = await resp.read()
                if resp.status >= 500:
                    endpoint.server_failed(resp.status)
                self.observer.attempt_failed(endpoint, f"http_{resp.status}")
                return error_from_body(body, resp.status)
            if resp.status < 500:
                endpoint.succeeded()
            ctype = resp.headers.get("content-type", "application/json")
            if call.stream and resp.status == 200 and ctype.startswith("text/event-stream"):
                await self._stream(call, endpoint, resp, send, deadline, t)
            else:
                await self._whole(call, resp, send, deadline)
            return None
        finally:
            if resp is not None:
                resp.close()

    async def _first_byte(
        self, call: Call, endpoint: Endpoint, t: Timeouts, deadline: float
    ) -> aiohttp.ClientResponse:
        """The upstream's response head; TimeoutError past the first-byte limit, _Lost if it went silent."""
        first_byte = t.first_byte_stream if call.stream else t.first_byte_nonstream
        limit = min(deadline, time.monotonic() + first_byte)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, connect=t.connect)
        post = asyncio.ensure_future(
            self.session.post(
                endpoint.url + call.path,
                data=call.body,
                headers=_upstream_headers(endpoint, call.request_id),
                timeout=timeout,
            )
        )
        check = max(0.05, t.stall_after / 2)
        try:
            while True:
                now = time.monotonic()
                if now >= limit:
                    raise TimeoutError
                done, _ = await asyncio.wait((post,), timeout=min(check, limit - now))
                if done:
                    return post.result()
                if endpoint.frozen(time.monotonic(), t.stall_after):
                    raise _Lost
        finally:
            if not post.done():
                post.cancel()
                post.add_done_callback(_close_late)

    async def _whole(self, call: Call, resp: aiohttp.ClientResponse, send: Send, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            if call.endpoint is not None:
                call.endpoint.transport_failed(type(e).__name__)
            raise GatewayTimeoutError("the upstream answer did not complete in time") from None
        ctype = resp.headers.get("content-type", "application/json")
        call.status = resp.status
        answered = resp.status < 400 or is_openai_error(body)
        if resp.status >= 500 and call.endpoint is not None:
            # Only a 5xx that is no answer of the engine's own (a proxy's page, a crash) counts against the
            # endpoint: vLLM answers 500 with its error body for some requests it cannot serve (an image for a
            # text-only model, max_tokens past the context on /v1/messages), and a client sending those must
            # not open the breaker of every endpoint it reaches. A dead engine core answers 500 in that shape
            # too, and its /health 503: the endpoint is checked at once instead of at the next interval.
            if answered:
                call.endpoint.probe_soon()
            else:
                call.endpoint.server_failed(resp.status)
        if not answered:
            # FastAPI's {"detail": ...} from vLLM, a proxy's text or HTML page: the client gets OpenAI's.
            body, ctype = error_from_body(body, resp.status).to_json(), "application/json"
        if resp.status == 200 and b'"usage"' in body and call.usage_shape is not None:
            call.usage = call.usage_shape.whole(body)
        elif resp.status == 200 and b'"usage"' in body:
            try:
                usage = orjson.loads(body).get("usage")
            except (orjson.JSONDecodeError, AttributeError):
                usage = None
            call.usage = usage if isinstance(usage, dict) else None
        headers = _response_headers(ctype, call)
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(
        self,
        call: Call,
        endpoint: Endpoint,
        resp: aiohttp.ClientResponse,
        send: Send,
        deadline: float,
        t: Timeouts,
    ) -> None:
        headers = _response_headers("text/event-stream; charset=utf-8", call)
        call.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        reader = resp.content
        buf = b""
        first = True
        usage_event = b""
        first_usage = b""  # where a stream reports usage twice (Anthropic's message_start and message_delta)
        last = time.monotonic()
        # Silence is checked every `check` seconds: long enough not to cost anything per event.
        check = min(t.idle_gap, max(0.05, t.stall_after / 2))
        loop = asyncio.get_running_loop()
        offset = loop.time() - time.monotonic()
        error: OpenAIError | None = None
        while error is None:
            watch: _Watchdog | None = None
            try:
                async with asyncio.timeout(None) as cm:
                    watch = _Watchdog(loop, cm, check, _loop_time(deadline), last + offset)
                    while True:
                        chunk = await reader.readany()
                        if not chunk:
                            break
                        now = time.monotonic()
                        endpoint.answered_at = now
                        buf += chunk
                        cut = buf.rfind(b"\n\n")
                        if cut < 0:
                            continue
                        out, buf = buf[: cut + 2], buf[cut + 2 :]
                        if first:
                            self.observer.first_event(call, now - call.started)
                            first = False
                        else:
                            self.observer.event_gap(call, now - last)
                        last = now
                        watch.last = now + offset
                        if b'"usage"' in out:
                            usage_event = out
                            first_usage = first_usage or out
                            if call.strip_usage:
                                out = _without_usage_event(out)
                                if not out:
                                    continue
                        watch.sending = True
                        call.events += 1
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                        watch.sending = False
                break
            except TimeoutError:
                now = time.monotonic()
                assert watch is not None
                if watch.sending:
                    call.status = 499
                    raise ClientStalled from None
                if now >= deadline:
                    error = GatewayTimeoutError("the request ran past timeouts.total")
                elif now - last >= t.idle_gap:
                    endpoint.transport_failed("stream stalled")
                    self.observer.attempt_failed(endpoint, "stream_idle_timeout")
                    error = BadGatewayError(f"upstream sent nothing for {t.idle_gap:g} s (timeouts.idle_gap)")
                elif endpoint.frozen(now, t.stall_after):
                    endpoint.transport_failed("stopped answering mid-stream")
                    self.observer.attempt_failed(endpoint, "stream_frozen")
                    error = BadGatewayError(f"upstream {endpoint.name} stopped answering mid-stream")
                # else: quiet but alive (a long prefill, a slow token): keep reading
            except aiohttp.ClientError:
                endpoint.transport_failed("stream broke")
                self.observer.attempt_failed(endpoint, "stream_transport")
                error = BadGatewayError("upstream stream ended early (transport)")
            finally:
                # However the relay leaves (the end, an error, the client gone), its timer goes with it.
                if watch is not None:
                    watch.close()
        if error is not None:
            call.status = error.status
            await send({"type": "http.response.body", "body": error.to_sse() + SSE_DONE, "more_body": False})
            return
        if buf.strip():
            await send({"type": "http.response.body", "body": buf, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        shape = call.usage_shape
        call.usage = _usage_of(usage_event) if shape is None else shape.stream(first_usage, usage_event)


class _Watchdog:
    """The timer of a stream being relayed: it expires the stream's `asyncio.timeout` once a read has waited
    `check` seconds since the last event (the caller then judges the silence), or at the deadline. A write
    to the client is bounded only by the deadline: a client that does not read is not a silent upstream.

    Rather than moving the timeout twice per event (a timer cancelled and another scheduled each time), the
    relay only records `last` and `sending`; the timer wakes at most once per `check` seconds and re-arms
    itself when it woke early."""

    __slots__ = ("_cm", "_handle", "_loop", "check", "deadline", "last", "sending")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, cm: asyncio.Timeout, check: float, deadline: float, last: float
    ) -> None:
        self._loop, self._cm = loop, cm
        self.check, self.deadline = check, deadline  # seconds; loop time
        self.last = last  # loop time of the last event
        self.sending = False
        # After a silence judged harmless, the next judgement is `check` from now, not at once (which spun).
        first = max(last, loop.time()) + check
        self._handle: asyncio.TimerHandle | None = loop.call_at(min(first, deadline), self._wake)

    def _wake(self) -> None:
        now = self._loop.time()
        if now >= self.deadline:
            return self._expire(now)
        if self.sending:
            when = now + self.check  # a write is waited for: only the deadline bounds it
        elif now >= self.last + self.check:
            return self._expire(now)
        else:
            when = self.last + self.check
        self._handle = self._loop.call_at(min(when, self.deadline), self._wake)

    def _expire(self, now: float) -> None:
        self._handle = None
        self._cm.reschedule(now)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _loop_time(monotonic_deadline: float) -> float:
    """A time.monotonic() deadline on the event loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


def _close_late(task: asyncio.Future[aiohttp.ClientResponse]) -> None:
    """A response head that arrived after its request was abandoned: close its connection."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


def _without_usage_event(events: bytes) -> bytes:
    """The events minus the usage-only one (`"choices":[]`) that was asked for on the client's behalf."""
    kept = [e for e in events.split(b"\n\n") if e and not (b'"usage"' in e and b'"choices":[]' in e)]
    return b"".join(e + b"\n\n" for e in kept)


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
