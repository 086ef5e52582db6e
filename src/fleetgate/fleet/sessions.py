"""Session affinity: which endpoint a conversation was last sent to, for a while (TTL), bounded in size."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class SessionTable:
    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._bound: OrderedDict[Hashable, tuple[str, float]] = OrderedDict()

    def get(self, session: Hashable, now: float) -> str | None:
        entry = self._bound.get(session)
        if entry is None:
            return None
        endpoint, expires = entry
        if expires < now:
            del self._bound[session]
            return None
        return endpoint

    def bind(self, session: Hashable, endpoint: str, now: float) -> None:
        self._bound[session] = (endpoint, now + self.ttl)
        self._bound.move_to_end(session)
        while len(self._bound) > self.max_entries:
            self._bound.popitem(last=False)

    def __len__(self) -> int:
        return len(self._bound)
