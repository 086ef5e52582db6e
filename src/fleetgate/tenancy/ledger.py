"""The usage ledger's writer: one row per answered request, buffered in memory and written in batches by a
background task, never on the request path.

The buffer is bounded (`ledger.buffer` rows): when the database is away long enough to fill it, new rows are
counted as dropped and logged (never silently lost: LiteLLM #29292). A failed write keeps its rows for the
next try. `flush()` writes everything; the gateway calls it in the drain, after the last request ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleetgate.tenancy.rows import UsageRow

if TYPE_CHECKING:
    from fleetgate.tenancy.store import KeyStore

__all__ = ["Ledger"]

log = logging.getLogger("fleetgate.tenancy")

STOP_WAIT = 10.0  # seconds a write under way may take to end at shutdown


class Ledger:
    def __init__(
        self,
        store: KeyStore,
        batch_size: int,
        interval: float,
        capacity: int,
        on_write: Callable[[int], None] = lambda n: None,
        on_drop: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.interval = interval
        self.capacity = capacity
        self.on_write = on_write
        self.on_drop = on_drop
        self.rows: deque[UsageRow] = deque()
        self.written = 0
        self.dropped = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer at a time: the loop or a flush
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._closing = False

    def record(self, row: UsageRow) -> None:
        """Queue a row (O(1), no I/O); counted and logged when the buffer is full."""
        if len(self.rows) >= self.capacity:
            self.dropped += 1
            self.on_drop(1)
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage ledger buffer full (%d rows): %d dropped", self.capacity, self.dropped)
            return
        self.rows.append(row)
        if len(self.rows) >= self.batch_size:
            self._wake.set()

    async def _write_some(self) -> int:
        async with self._lock:
            n = min(len(self.rows), self.batch_size)
            if not n:
                return 0
            batch = [self.rows.popleft() for _ in range(n)]
            try:
                await self.store.write_usage(batch)
            except Exception as e:
                self.rows.extendleft(reversed(batch))  # keep them, in order, for the next try
                if not self._failing:
                    log.warning("usage ledger write failed (%d rows kept): %s", len(self.rows), e)
                self._failing = True
                raise
            if self._failing:
                log.info("usage ledger writes again")
            self._failing = False
            self.written += n
            self.on_write(n)
            return n

    async def flush(self) -> None:
        """Write every buffered row (raises if the database refuses)."""
        while self.rows:
            await self._write_some()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                while not self._closing and await self._write_some() == self.batch_size:
                    pass
            except Exception:
                with contextlib.suppress(TimeoutError):  # the database is away; rows wait in the buffer
                    async with asyncio.timeout(self.interval):
                        await self._wake.wait()

    async def stop(self) -> None:
        """Write every row and end the writer. A write under way is let finish, not cancelled: its rows
        are out of the buffer, and a cancelled write would lose them (or commit them unseen). Only a
        database that does not answer within `STOP_WAIT` is given up on, and said so."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(STOP_WAIT):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                log.error("usage ledger: a write did not end within %g s at shutdown; its rows may be lost",
                          STOP_WAIT)  # fmt: skip
            except Exception:
                pass  # the loop logged it; flush() tries again below
        try:
            await self.flush()
        except Exception as e:
            log.error("usage ledger: %d row(s) not written at shutdown: %s", len(self.rows), e)
