"""The response cache: exact-match answers for requests that ask for one (`x-fleetgate-cache: on`) or, with
`cache.deterministic`, every request at temperature 0.

The key is a SHA-256 of the route, the whole request body with its keys sorted (model, messages, tools,
every parameter, `stream` included) and, unless `shared_across_tenants`, the tenant: one tenant's answers
never serve another. What is stored is what the client was sent, byte for byte, as the chunks it was sent
in, so a streamed hit replays the same events in the same framing and a non-streamed hit the same body.
Only complete answers are stored (status 200; a stream that ended without an error event), up to
`max_entry_bytes`; entries live `ttl` seconds, at most `max_entries` of them in memory (least recently used
out first) or in Redis (expiry by Redis, shared by every replica).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import orjson

__all__ = [
    "CACHE_HEADER",
    "Entry",
    "MemoryCache",
    "Recorder",
    "RedisCache",
    "ResponseCache",
    "cache_key",
    "replay",
]

log = logging.getLogger("fleetgate.tenancy")

CACHE_HEADER = b"x-fleetgate-cache"
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Entry:
    status: int
    content_type: bytes
    chunks: list[bytes] = field(default_factory=list)

    def pack(self) -> bytes:
        return bytes(msgpack.packb([self.status, self.content_type, self.chunks]))

    @classmethod
    def unpack(cls, raw: bytes) -> Entry:
        status, ctype, chunks = msgpack.unpackb(raw)
        return cls(int(status), bytes(ctype), [bytes(c) for c in chunks])


def cache_key(path: str, body: dict[str, Any], tenant: str | None) -> str:
    digest = hashlib.sha256()
    digest.update(path.encode())
    digest.update(b"\0")
    digest.update((tenant or "").encode())
    digest.update(b"\0")
    digest.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


class ResponseCache(Protocol):
    async def get(self, key: str) -> Entry | None: ...
    async def put(self, key: str, entry: Entry) -> None: ...
    async def close(self) -> None: ...


class MemoryCache:
    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.entries: OrderedDict[str, tuple[float, Entry]] = OrderedDict()

    async def get(self, key: str) -> Entry | None:
        found = self.entries.get(key)
        if found is None:
            return None
        expires, entry = found
        if expires <= time.monotonic():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: Entry) -> None:
        self.entries[key] = (time.monotonic() + self.ttl, entry)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    async def close(self) -> None:
        return None


class RedisCache:
    """Entries in Redis, shared by replicas. The cache only saves work, so a Redis that fails is a miss (and
    an answer not kept), logged, never an error for the request. Connections come from a pool that makes a
    burst wait for one (up to `WAIT` seconds) instead of refusing it: redis-py's default pool refuses the
    101st concurrent command at once."""

    CONNECTIONS = 64
    WAIT = 2.0

    def __init__(self, url: str, ttl: float, prefix: str = "fg:cache:") -> None:
        import redis.asyncio as aioredis

        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=self.CONNECTIONS, timeout=self.WAIT, socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )  # fmt: skip
        self.redis = aioredis.Redis(connection_pool=pool)
        self.ttl_ms = int(ttl * 1000)
        self.prefix = prefix
        self.failures = 0

    async def get(self, key: str) -> Entry | None:
        try:
            raw = await self.redis.get(self.prefix + key)
            return Entry.unpack(raw) if isinstance(raw, bytes) else None
        except Exception as e:  # unreachable, timed out, no connection free, an entry that does not unpack
            self._failed(e)
            return None

    async def put(self, key: str, entry: Entry) -> None:
        try:
            await self.redis.set(self.prefix + key, entry.pack(), px=self.ttl_ms)
        except Exception as e:
            self._failed(e)

    def _failed(self, e: Exception) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            log.warning("response cache in Redis failed (%d so far, served as misses): %s", self.failures, e)

    async def close(self) -> None:
        await self.redis.aclose()


class Recorder:
    """Passes an answer through to the client and keeps a copy of it, up to `limit` bytes."""

    def __init__(self, send: Send, limit: int) -> None:
        self._send = send
        self.limit = limit
        self.size = 0
        self.entry: Entry | None = None

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            self.entry = Entry(int(message["status"]), headers.get(b"content-type", b"application/json"))
        elif self.entry is not None:
            chunk = bytes(message.get("body", b""))
            self.size += len(chunk)
            if self.size > self.limit:
                self.entry = None  # too big to keep; the client still gets all of it
            elif chunk and not chunk.startswith(b":"):  # keep-alives were for the wait, not the answer
                self.entry.chunks.append(chunk)
        await self._send(message)


async def replay(send: Send, entry: Entry, request_id: str) -> None:
    """Send a stored answer as it was sent the first time, chunk by chunk."""
    headers = [(b"content-type", entry.content_type), (b"x-request-id", request_id.encode()),
               (CACHE_HEADER, b"HIT")]  # fmt: skip
    await send({"type": "http.response.start", "status": entry.status, "headers": headers})
    last = len(entry.chunks) - 1
    for i, chunk in enumerate(entry.chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < last})
    if last < 0:
        await send({"type": "http.response.body", "body": b""})
