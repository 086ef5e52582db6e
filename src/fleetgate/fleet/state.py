"""Fleet state: what routing knows about each endpoint, written by background loops, read without I/O."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from fleetgate.fleet.prefix_index import ApproxIndex, PreciseIndex
from fleetgate.fleet.sessions import SessionTable
from fleetgate.fleet.vllm_metrics import VLLMLoad


class Breaker(Enum):
    CLOSED = "closed"  # in rotation
    OPEN = "open"  # out of rotation until a health probe succeeds


# 5xx answers in a row that take an endpoint out; a transport failure takes it out at once.
FAILURES_TO_OPEN = 3


@dataclass(eq=False)
class Endpoint:
    """One upstream server (a vLLM, a simulator, a RunPod or Cloud Run URL).

    Each group of fields has one writer, named on the group; everyone else only reads."""

    # Identity, from the fleet file or the worker that started it: written once, when it is built.
    name: str
    url: str  # scheme://host[:port][/path prefix], no trailing slash
    pool: str
    api_key: str | None = None
    weight: float = 1.0
    kv_events: str | None = None  # the ZMQ address of its KV-cache events, when it publishes them
    # The circuit breaker, through its methods below: the monitor's probes open and close it, the relay's
    # failed attempts open it.
    breaker: Breaker = Breaker.OPEN  # nothing is routable before its first good health check
    failures: int = 0
    last_error: str | None = None
    # Set by the monitor while it watches the endpoint: checks its health now instead of at the next interval.
    probe_soon: Callable[[], None] = field(default=lambda: None, repr=False)
    # The monitor (fleet/monitor.py): scrapes, model discovery, probes.
    load: VLLMLoad | None = None
    load_at: float = 0.0  # monotonic time of the last good scrape
    sent_at_scrape: int = 0  # `sent` when `load` was read: requests sent since count as waiting
    models: frozenset[str] = frozenset()  # names its /v1/models lists (base models and adapters)
    adapters: frozenset[str] = frozenset()  # the LoRA adapters among them (entries with a parent)
    discovered_at: float = 0.0  # monotonic time `models` was last read
    alive_at: float = 0.0  # monotonic time a probe or scrape last answered
    # The relay: monotonic time the endpoint last sent a byte of a response.
    answered_at: float = 0.0
    # The router's leases (routing/router.py): what this gateway committed there.
    in_flight: int = 0
    sent: int = 0  # requests ever picked for it (never decreases, unlike in_flight)
    # Of the requests sent since the scrape at `sent_at_scrape == ended_epoch`, those already over: they are
    # neither in that scrape nor in vLLM any more.
    ended_since: int = 0
    ended_epoch: int = 0
    # Prompt tokens this gateway sent that the endpoint has not started answering and does not have cached:
    # prefill work queued there that its metrics do not show yet.
    pending_prefill: int = 0
    # monotonic time of the first request sent here after its last event batch (0: none since); events
    # that stay away after work was sent mean the subscription is broken. The router sets it, the KV-event
    # subscriber clears it when a batch comes.
    awaiting_events_since: float = 0.0
    # The KV-event subscriber (fleet/kv_events.py).
    kv_live: bool = False  # events flow and the precise index is complete since they started
    kv_seq: int = -1  # sequence number of the last event batch
    kv_event_at: float = 0.0  # monotonic time of the last event batch
    # The pool of started workers (scaling/pools.py).
    enabled: bool = True  # off while it drains (it finishes its streams, takes no new ones)
    max_streams: int | None = None  # the `concurrency` rule's cap: at the cap it takes nothing more

    @property
    def last_alive(self) -> float:
        """Its last sign of life: a health probe or scrape answered, a byte of a response."""
        return max(self.alive_at, self.answered_at)

    def stale(self, now: float, stale_after: float) -> bool:
        """It reports vLLM's metrics, but the last reading is too old to trust."""
        return self.load is not None and now - self.load_at > stale_after

    def frozen(self, now: float, stall_after: float) -> bool:
        """No probe, scrape or response byte answered for `stall_after` s: a stopped process or a hung GPU
        (a busy one still answers its probes)."""
        return now - self.last_alive > stall_after

    def routable(self) -> bool:
        return (
            self.enabled
            and self.breaker is Breaker.CLOSED
            and (self.load is None or self.load.awake)
            and (self.max_streams is None or self.in_flight < self.max_streams)
        )

    def fresh_load(self, now: float, stale_after: float) -> VLLMLoad | None:
        """The scraped load if recent enough to trust; stale numbers are worse than none."""
        if self.load is None or now - self.load_at > stale_after:
            return None
        return self.load

    # ---- breaker ---------------------------------------------------------------------------------------
    def transport_failed(self, error: str) -> None:
        self.breaker = Breaker.OPEN
        self.failures += 1
        self.last_error = error

    def server_failed(self, status: int) -> None:
        self.failures += 1
        self.last_error = f"HTTP {status}"
        if self.failures >= FAILURES_TO_OPEN:
            self.breaker = Breaker.OPEN

    def succeeded(self) -> None:
        self.failures = 0

    def probe_ok(self) -> None:
        self.breaker = Breaker.CLOSED
        self.failures = 0
        self.alive_at = time.monotonic()

    def probe_failed(self, error: str) -> None:
        self.breaker = Breaker.OPEN
        self.last_error = error

    def snapshot(self, now: float, stale_after: float) -> dict[str, object]:
        load = self.fresh_load(now, stale_after)
        return {
            "name": self.name,
            "url": self.url,
            "pool": self.pool,
            "state": self.breaker.value,
            "routable": self.routable(),
            "in_flight": self.in_flight,
            "failures": self.failures,
            "last_error": self.last_error,
            "models": sorted(self.models),
            "adapters": sorted(self.adapters),
            "pending_prefill_tokens": self.pending_prefill,
            "kv_events": None
            if self.kv_events is None
            else {"address": self.kv_events, "live": self.kv_live, "last_seq": self.kv_seq},
            "load": None
            if load is None
            else {
                "running": load.running,
                "waiting": load.waiting,
                "kv_usage": load.kv_usage,
                "awake": load.awake,
                "age_s": round(now - self.load_at, 3),
            },
        }


@dataclass
class PoolState:
    """A pool's endpoints and what routing remembers about them."""

    name: str
    endpoints: list[Endpoint]
    approx: ApproxIndex
    sessions: SessionTable
    precise: PreciseIndex = field(default_factory=PreciseIndex)

    def routable(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.routable()]

    def cached(self, keys: Sequence[int], endpoints: Sequence[Endpoint]) -> list[int]:
        """For each endpoint, how many leading blocks of `keys` it holds: what its KV-cache events say
        where they flow (precise), otherwise what this gateway routed there (approximate).

        When no live cache in the pool holds any block of the prompt (evicted everywhere, or its first
        prefill still running and its events not yet in), where it was last sent is the one clue left:
        following it gives the prompt one home again, where load alone would scatter its next requests over
        the pool. The pool's caches decide, not just `endpoints`', so the pick and the lease agree."""
        names = [e.name for e in endpoints]
        hits = self.approx.match(keys, names)
        if any(e.kv_live for e in endpoints) and self._held_live(keys):
            exact = self.precise.match(keys, names)
            hits = [x if e.kv_live else h for e, x, h in zip(endpoints, exact, hits, strict=True)]
        return hits

    def _held_live(self, keys: Sequence[int]) -> bool:
        """Whether any live cache in the pool holds the prompt's first block (a prefix starts there)."""
        live = [e.name for e in self.endpoints if e.kv_live]
        return bool(keys) and any(self.precise.match(keys[:1], live))


@dataclass
class FleetState:
    pools: dict[str, PoolState] = field(default_factory=dict)

    def endpoints(self) -> list[Endpoint]:
        return [e for p in self.pools.values() for e in p.endpoints]

    def any_routable(self) -> bool:
        return any(e.routable() for e in self.endpoints())
