"""Sending one request and measuring its stream, the way DESIGN's "Measuring" defines the numbers.

TTFT is the time to the first chunk that carries content, a tool call or reasoning (not the empty role
chunk vLLM sends first). Every chunk that carries a token (visible or not) is a token event; inter-token
latencies are the gaps between token events after the first content, divided by the tokens each gap stands
for when the usage count shows that chunks carried several tokens. Token counts come from the usage chunk.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from fleetgate.bench.records import RequestRecord, RequestSpec

PATHS = {"chat": "/chat/completions", "completions": "/completions", "responses": "/responses"}


@dataclass
class StreamState:
    """What a stream has shown so far; `feed` takes one SSE event's data."""

    api: str
    want_text: bool = False
    first_content: float | None = None
    tokens_before: int = 0  # token events up to and including the first content
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    done: bool = False
    error: str | None = None
    error_message: str | None = None
    text_parts: list[str] | None = None

    def __post_init__(self) -> None:
        if self.want_text:
            self.text_parts = []

    def feed(self, data: bytes, now: float) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error, self.error_message = "bad_event", data[:200].decode(errors="replace")
            return
        if "error" in obj and isinstance(obj["error"], dict):
            err = obj["error"]
            self.error = str(err.get("type") or "stream_error")
            self.error_message = str(err.get("message", ""))
            return
        if self.api == "responses":
            self._feed_responses(obj, now)
            return
        usage = obj.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        for choice in obj.get("choices") or ():
            if self.api == "chat":
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if "role" in delta and not content:
                    continue  # the role chunk announces the answer; it carries no token
                carries = bool(content) or bool(delta.get("tool_calls"))
                carries = carries or bool(delta.get("reasoning") or delta.get("reasoning_content"))
                is_token = content is not None or carries
            else:
                content = choice.get("text")
                carries = bool(content)
                is_token = content is not None
            if not is_token:
                continue
            self._token(now, carries)
            if self.text_parts is not None and content:
                self.text_parts.append(content)

    def _feed_responses(self, obj: dict[str, Any], now: float) -> None:
        kind = obj.get("type", "")
        if kind == "response.output_text.delta":
            delta = obj.get("delta") or ""
            self._token(now, bool(delta))
            if self.text_parts is not None:
                self.text_parts.append(delta)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            usage = (obj.get("response") or {}).get("usage") or {}
            self.prompt_tokens = int(usage.get("input_tokens") or 0)
            self.completion_tokens = int(usage.get("output_tokens") or 0)
            self.done = True
            if kind == "response.failed":
                self.error = "response_failed"

    def _token(self, now: float, carries: bool) -> None:
        if self.first_content is None:
            self.tokens_before += 1
            if not carries:
                return
            self.first_content = now
        self.token_times.append(now)

    def itl(self) -> list[float]:
        times = self.token_times
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if not gaps:
            return []
        # Chunks may carry several tokens (batched detokenization, a slow reader): spread each gap over them.
        after = self.completion_tokens - self.tokens_before
        per_gap = max(1.0, after / len(gaps)) if self.completion_tokens else 1.0
        return [g / per_gap for g in gaps] if per_gap > 1.0 else gaps


def build_body(spec: RequestSpec, model: str) -> bytes:
    body: dict[str, Any] = {"model": model, **spec.body, "stream": True}
    if spec.api != "responses":
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def error_of(status: int, raw: bytes) -> tuple[str, str]:
    try:
        err = orjson.loads(raw).get("error") or {}
        return str(err.get("type") or f"http_{status}"), str(err.get("message", ""))[:500]
    except (orjson.JSONDecodeError, AttributeError):
        return f"http_{status}", raw[:200].decode(errors="replace")


async def send(
    session: aiohttp.ClientSession,
    url: str,
    spec: RequestSpec,
    record: RequestRecord,
    body: bytes,
    headers: dict[str, str],
    t0: float,
    on_text: Callable[[str | None], None] | None = None,
) -> None:
    """Send `spec` and fill `record`; never raises for a request that failed (that is a result)."""
    clock = time.monotonic
    state = StreamState(spec.api, want_text=on_text is not None)
    start = clock()
    record.sent = start - t0
    try:
        async with session.post(url + PATHS[spec.api], data=body, headers=headers) as resp:
            record.status = resp.status
            if resp.status != 200:
                record.error, record.error_message = error_of(resp.status, await resp.read())
            else:
                await _read_stream(resp, state, clock, start)
    except TimeoutError:
        record.error = "timeout"
    except aiohttp.ClientConnectorError as e:
        record.error, record.error_message = "connect", str(e)[:300]
    except aiohttp.ClientError as e:
        record.error, record.error_message = "transport", f"{type(e).__name__}: {e}"[:300]
    end = clock() - start
    if record.error is None and record.status == 200:
        if state.error is not None:
            record.error, record.error_message = state.error, state.error_message
        elif not state.done:
            record.error = "truncated"  # the stream ended without [DONE]: never count it as a success
    record.e2e = end
    record.ttft = state.first_content
    record.prompt_tokens = state.prompt_tokens
    record.completion_tokens = state.completion_tokens
    record.chunks = len(state.token_times)
    record.itl = state.itl()
    if on_text is not None:
        on_text("".join(state.text_parts or ()) if record.ok else None)


async def _read_stream(
    resp: aiohttp.ClientResponse, state: StreamState, clock: Callable[[], float], start: float
) -> None:
    buf = b""
    async for data in resp.content.iter_any():
        now = clock() - start
        buf += data
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            event, buf = buf[:end], buf[end + 2 :]
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    state.feed(line[5:].strip(), now)
        if state.done:
            return
