"""Lua script calls to Redis, coalesced: the calls made while a batch is on the wire leave together as the
next batch, one pipeline (one write, one read) on one connection.

Why: the limiter makes two calls per request (admit, settle). One connection per call in flight, as
redis-py's pool gives, costs a round trip's worth of client CPU per call and, under a burst, more
connections than the pool holds: redis-py 8 refuses the 101st at once ("Too many connections"), which
`on_redis_error: closed` turned into 503s while Redis was fine. Here a burst of any width uses one
connection, and the client's CPU per call falls as the load rises (the batch grows). Nothing waits to fill
a batch: an idle batcher sends a call at once, so one request alone pays one plain round trip.

`call` awaits the script's reply; `cast` queues a call whose reply nobody waits for (a settlement): its
failures are logged and counted, and `close` sends whatever is still queued before it returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["ScriptBatcher"]

log = logging.getLogger("fleetgate.tenancy")

MAX_BATCH = 256  # calls per pipeline: bounds one reply's size and the wait of the calls behind it


@dataclass
class _Call:
    script: int
    keys: Sequence[str]
    args: Sequence[str | int]
    future: asyncio.Future[Any] | None  # None: cast, nobody waits for the reply


class ScriptBatcher:
    """Runs the given Lua scripts by SHA on one Redis client, one batch in flight at a time."""

    def __init__(self, redis: Redis, scripts: Sequence[str], max_batch: int = MAX_BATCH) -> None:
        self.redis = redis
        self.sources = list(scripts)
        self.shas = [hashlib.sha1(s.encode()).hexdigest() for s in scripts]
        self.max_batch = max_batch
        self.pending: list[_Call] = []
        self.sender: asyncio.Task[None] | None = None
        self.loaded = False
        self.cast_failures = 0
        self.batches = 0  # pipelines and single calls sent

    async def call(self, script: int, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run script number `script` (its index in `scripts`) and return its reply."""
        return await self.submit(script, keys, args)

    def submit(self, script: int, keys: Sequence[str], args: Sequence[str | int]) -> asyncio.Future[Any]:
        """As `call`, returning the reply's future: the caller may stop waiting (be cancelled) while the
        call still runs, and then look at its reply to undo what it did."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(_Call(script, keys, args, future))
        return future

    def cast(self, script: int, keys: Sequence[str], args: Sequence[str | int]) -> None:
        """Queue a call whose reply nobody waits for."""
        self._queue(_Call(script, keys, args, None))

    async def close(self) -> None:
        """Send what is queued and wait for it."""
        while self.sender is not None:
            await asyncio.shield(self.sender)

    def _queue(self, call: _Call) -> None:
        self.pending.append(call)
        if self.sender is None:
            self.sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                try:
                    replies = await self._send(batch)
                except Exception as e:  # unreachable, timed out: every call of the batch fails alike
                    replies = [e] * len(batch)
                for call, reply in zip(batch, replies, strict=True):
                    self._deliver(call, reply)
        finally:
            self.sender = None
            # Cancelled (the loop is closing): nobody may wait forever on a call that was never sent.
            for call in self.pending:
                if call.future is not None and not call.future.done():
                    call.future.set_exception(ConnectionError("the Redis batcher stopped"))
            self.pending = [c for c in self.pending if c.future is None]

    def _deliver(self, call: _Call, reply: Any) -> None:
        if call.future is None:
            if isinstance(reply, Exception):
                self.cast_failures += 1
                if self.cast_failures == 1 or self.cast_failures % 1000 == 0:
                    log.warning("a Redis call failed (%d so far): %s", self.cast_failures, reply)
            return
        if call.future.done():  # nobody waits any more (a cancelled caller saw to it)
            return
        if isinstance(reply, Exception):
            call.future.set_exception(reply)
        else:
            call.future.set_result(reply)

    async def _send(self, batch: list[_Call]) -> list[Any]:
        from redis.exceptions import NoScriptError

        if not self.loaded:
            await self._load()
        replies = await self._pipeline(batch)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # Redis restarted or its scripts were flushed: load them again and resend those calls
            await self._load()
            again = await self._pipeline([batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        from redis.exceptions import ResponseError

        self.batches += 1
        if len(batch) == 1:  # a plain call is cheaper than a pipeline of one
            c = batch[0]
            try:
                return [await self.redis.evalsha(self.shas[c.script], len(c.keys), *c.keys, *c.args)]
            except ResponseError as e:
                return [e]
        pipe = self.redis.pipeline(transaction=False)
        for c in batch:
            pipe.evalsha(self.shas[c.script], len(c.keys), *c.keys, *c.args)
        return list(await pipe.execute(raise_on_error=False))  # execute gives the connection back

    async def _load(self) -> None:
        for source in self.sources:
            await self.redis.script_load(source)
        self.loaded = True
