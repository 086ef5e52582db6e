"""Fleet state: what routing knows about each endpoint, written by background loops, read without I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from fleetgate.config import RoutingConfig
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
    """One upstream server (a vLLM, a simulator, a RunPod or Cloud Run URL)."""

    name: str
    url: str  # scheme://host[:port][/path prefix], no trailing slash
    pool: str
    api_key: str | None = None
    weight: float = 1.0
    breaker: Breaker = Breaker.OPEN  # nothing is routable before its first good health check
    failures: int = 0
    last_error: str | None = None
    in_flight: int = 0
    load: VLLMLoad | None = None
    load_at: float = 0.0  # monotonic time of the last good scrape
    models: frozenset[str] = frozenset()  # names its /v1/models lists (base models and adapters)
    adapters: frozenset[str] = frozenset()  # the LoRA adapters among them (entries with a parent)
    discovered_at: float = 0.0  # monotonic time `models` was last read
    # Prompt tokens this gateway sent that the endpoint has not started answering and does not have cached:
    # prefill work queued there that its metrics do not show yet.
    pending_prefill: int = 0
    in_flight_at_scrape: int = 0  # in_flight when `load` was read: requests sent since count as waiting
    kv_events: str | None = None  # the ZMQ address of its KV-cache events, when it publishes them
    kv_live: bool = False  # events flow and the precise index is complete since they started
    kv_seq: int = -1  # sequence number of the last event batch
    kv_event_at: float = 0.0  # monotonic time of the last event batch
    # monotonic time of the first request sent here after its last event batch (0: none since); events
    # that stay away after work was sent mean the subscription is broken
    awaiting_events_since: float = 0.0
    # monotonic time of its last sign of life: a health probe or scrape answered, a byte of a response
    last_alive: float = 0.0
    # A started worker: off while it drains (it finishes its streams, takes no new ones)
    enabled: bool = True
    max_streams: int | None = None  # the `concurrency` rule's cap: at the cap it takes nothing more

    def queued(self, load: VLLMLoad) -> float:
        """vLLM's queue as `load` read it, plus what we sent since: vLLM has not reported those yet."""
        return load.waiting + max(0, self.in_flight - self.in_flight_at_scrape)

    def saturated(self, now: float, stale_after: float, max_waiting: float, max_kv_usage: float) -> bool:
        """Its queue or its KV cache says more work now only waits (or preempts), or the figures it reports
        stopped coming (a frozen process keeps its last ones: they must not make it look idle)."""
        load = self.fresh_load(now, stale_after)
        if load is None:
            return self.stale(now, stale_after)
        return self.queued(load) >= max_waiting or load.kv_usage >= max_kv_usage

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
        self.last_alive = time.monotonic()

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
    endpoints: list[Endpoint] = field(default_factory=list)
    approx: ApproxIndex = field(default_factory=lambda: ApproxIndex(RoutingConfig().index_blocks))
    precise: PreciseIndex = field(default_factory=PreciseIndex)
    sessions: SessionTable = field(default_factory=lambda: SessionTable(RoutingConfig().session.ttl))

    def routable(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.routable()]


@dataclass
class FleetState:
    pools: dict[str, PoolState] = field(default_factory=dict)

    def endpoints(self) -> list[Endpoint]:
        return [e for p in self.pools.values() for e in p.endpoints]

    def any_routable(self) -> bool:
        return any(e.routable() for e in self.endpoints())
