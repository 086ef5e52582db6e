"""Consistent hashing with bounded loads for approximate prefix routing across gateway replicas.

Each replica's approximate prefix index knows only what that replica routed, so with several replicas behind
one Service a prefix would warm a different pod per replica. The ring gives every replica the same first
choice without a shared store: a prompt's prefix key (the chained key at depth `prefix_blocks`, the same
number on every replica: keys are CRC-32 chains, not Python hashes) hashes onto a ring of endpoint names; the
owner is the first endpoint clockwise whose in-flight count is under ceil(load_bound * (total + 1) / n)
(Mirrokni, Thorup and Zadimoghaddam's bound), so a hot prefix spills to the next pods in ring order instead
of piling onto one. Pods joining or leaving move only the keys next to them.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

from fleetgate.fleet.state import Endpoint, PoolState
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.settings import RoutingSettings

__all__ = ["HashRing", "RingScorer"]

# Points per endpoint on the ring: enough that shares stay within a few percent of even.
VNODES = 64


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """The ring of a set of endpoint names (rebuilt only when the set changes)."""

    def __init__(self, vnodes: int = VNODES) -> None:
        self.vnodes = vnodes
        self._names: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []

    def _build(self, names: tuple[str, ...]) -> None:
        ring = sorted((_point(f"{n}#{i}".encode()), n) for n in names for i in range(self.vnodes))
        self._names = names
        self._points = [p for p, _ in ring]
        self._owners = [n for _, n in ring]

    def owner(self, key: int, loads: dict[str, int], bound: float) -> str | None:
        """The endpoint the key goes to: its successor on the ring, skipping those at the load bound."""
        names = tuple(sorted(loads))
        if not names:
            return None
        if names != self._names:
            self._build(names)
        cap = math.ceil(bound * (sum(loads.values()) + 1) / len(names))
        start = bisect.bisect_left(self._points, _point(key.to_bytes(16, "big", signed=False)))
        seen: set[str] = set()
        for i in range(len(self._points)):
            name = self._owners[(start + i) % len(self._points)]
            if name in seen:
                continue
            if loads[name] < cap:
                return name
            seen.add(name)
            if len(seen) == len(names):
                break
        return None


class RingScorer:
    """1 for the prompt's ring owner, 0 for the others (no prefix keys: 0 for all). Off unless listed."""

    needs: ClassVar[frozenset[Literal["prompt", "session"]]] = frozenset({"prompt"})
    default_weight: ClassVar[float] = 0.0

    def __init__(self, pool: PoolState, settings: RoutingSettings) -> None:
        self.prefix_blocks = settings.ring_prefix_blocks
        self.load_bound = settings.ring_load_bound
        self.ring = HashRing()

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        keys = request.keys
        if not keys or not endpoints:
            return [0.0] * len(endpoints)
        key = keys[min(len(keys), self.prefix_blocks) - 1]
        owner = self.ring.owner(key, {e.name: e.in_flight for e in endpoints}, self.load_bound)
        return [1.0 if e.name == owner else 0.0 for e in endpoints]
