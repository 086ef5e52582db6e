"""Issued keys in memory, so authenticating a request reads no database.

Revocation reaches every replica by polling the store's one-row version table every `refresh_interval`
(0.25 s by default) and reloading all live keys when it moved. Polling was chosen over PostgreSQL's
LISTEN/NOTIFY and a Redis channel because it works the same on SQLite (the default, where the CLI writes
from another process and there is nothing to listen to), needs no long-lived connection that can silently
die, and costs one indexed single-row read per interval per replica. A missed poll (database down) keeps
the last snapshot: known keys keep working, and the failure is logged once until it recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from fleetgate.tenancy.keys import KeyRecord, digest

if TYPE_CHECKING:
    from fleetgate.tenancy.store import KeyStore

__all__ = ["KeyCache"]

log = logging.getLogger("fleetgate.tenancy")


class KeyCache:
    def __init__(self, refresh_interval: float, store: KeyStore | None = None) -> None:
        self.store = store  # set before start()
        self.refresh_interval = refresh_interval
        self.version = -1
        self.keys: dict[bytes, KeyRecord] = {}
        self.healthy = True
        self._task: asyncio.Task[None] | None = None

    def lookup(self, secret: str) -> KeyRecord | None:
        """The key whose secret this is (a dict lookup on its digest; live or not)."""
        return self.keys.get(digest(secret))

    async def refresh(self) -> bool:
        """Reload when the version moved; True if it did."""
        assert self.store is not None
        version = await self.store.version()
        if version == self.version:
            return False
        self.version, self.keys = await self.store.snapshot()
        return True

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception as e:  # the database is away: keep serving the last snapshot
                if self.healthy:
                    log.warning("key store unreachable, serving the last %d keys: %s", len(self.keys), e)
                self.healthy = False
            else:
                if not self.healthy:
                    log.info("key store reachable again")
                self.healthy = True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
