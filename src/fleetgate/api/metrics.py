"""The gateway's Prometheus metrics (`fleetgate_*`), one registry per app, fed by the relay's hooks."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleetgate.api.asgi import Exchange
from fleetgate.fleet.state import Endpoint, FleetState
from fleetgate.relay import Call, RelayObserver

access = logging.getLogger("fleetgate.access")
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Cold starts run from seconds (a simulator, a small model) to many minutes (a download and a compile).
_STARTUP = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)
_GAP = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


_PROBES = frozenset({"/health", "/ready"})


class GatewayMetrics(RelayObserver):
    def __init__(self, fleet: FleetState) -> None:
        self.registry = CollectorRegistry()
        self.fleet = fleet
        r = self.registry
        self.requests = Counter(
            "fleetgate_requests",
            "Requests answered (whoever answered: upstream or gateway), by route, model, pool, endpoint, "
            "status (499: the client left) and tenant.",
            ["route", "model", "pool", "endpoint", "status", "tenant"], registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "fleetgate_rejected",
            "Requests refused before reaching a pool, by reason.",
            ["reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "fleetgate_time_to_first_event_seconds", "Time from arrival to the first streamed event.",
            ["pool"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.gaps = Histogram(
            "fleetgate_event_gap_seconds",
            "Gaps between relayed stream events.",
            ["pool"],
            buckets=_GAP,
            registry=r,
        )
        self._gap_of: dict[str, Histogram] = {}  # pool -> its child of `gaps` (pools are configured)
        self.e2e = Histogram(
            "fleetgate_request_duration_seconds", "Time from arrival to the end of the answer.",
            ["pool"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "fleetgate_tokens",
            "Tokens read from upstream usage, by direction (in, out, cached: prompt tokens served from the "
            "prefix cache) and tenant.",
            ["pool", "direction", "tenant"],
            registry=r,
        )
        # Tenants named in the fleet file keep their name as a label; issued keys' tenants (unbounded) do
        # only when `tenancy.tenants` names them, else they count as "other".
        self.tenant_label: Callable[[str], str] = lambda tenant: tenant
        self.limited = Counter(
            "fleetgate_rate_limited", "Requests refused by a key's or tenant's limits, by reason.",
            ["tenant", "reason"], registry=r,
        )  # fmt: skip
        self.usage_rows = Counter(
            "fleetgate_usage_rows", "Usage ledger rows by fate (written, dropped: the buffer was full).",
            ["state"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "fleetgate_retries", "Attempts retried on another endpoint.", ["pool"], registry=r
        )
        self.upstream_errors = Counter(
            "fleetgate_upstream_errors", "Failed upstream attempts, by endpoint and kind.",
            ["endpoint", "kind"], registry=r,
        )  # fmt: skip
        self.healthy = Gauge(
            "fleetgate_endpoint_routable",
            "1 when the endpoint is in rotation.",
            ["pool", "endpoint"],
            registry=r,
        )
        self.in_flight = Gauge(
            "fleetgate_endpoint_in_flight", "Requests the gateway has in flight at the endpoint.",
            ["pool", "endpoint"], registry=r,
        )  # fmt: skip
        self.load = Gauge(
            "fleetgate_endpoint_load", "The endpoint's load as last scraped (running, waiting, kv_usage).",
            ["pool", "endpoint", "kind"], registry=r,
        )  # fmt: skip

        self.route_decisions = Counter(
            "fleetgate_route_decisions", "Endpoints chosen, by pool and what decided the choice.",
            ["pool", "reason"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "fleetgate_queue_depth", "Requests waiting in the pool's flow queue.", ["pool"], registry=r
        )
        # Per pool, present at zero endpoints: with queue_depth, the demand an external autoscaler (KEDA, HPA)
        # scales on; the per-endpoint series vanish with the last pod.
        self.pool_in_flight = Gauge(
            "fleetgate_pool_in_flight", "Requests the gateway has in flight at the pool's endpoints.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "fleetgate_queue_wait_seconds", "Time requests waited in the flow queue (those that waited).",
            ["pool"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.shed = Counter(
            "fleetgate_shed", "Requests refused by the flow queue (429 saturated/full, 503 waited too long).",
            ["pool", "reason"], registry=r,
        )  # fmt: skip
        self.kv_events_live = Gauge(
            "fleetgate_endpoint_kv_events_live", "1 while the endpoint's KV-cache events flow.",
            ["pool", "endpoint"], registry=r,
        )  # fmt: skip
        self.pending_prefill = Gauge(
            "fleetgate_endpoint_pending_prefill_tokens",
            "Uncached prompt tokens sent to the endpoint that it has not started answering.",
            ["pool", "endpoint"], registry=r,
        )  # fmt: skip

        self.workers = Gauge(
            "fleetgate_workers", "Started workers by state (starting, ready, sleeping, draining, ...).",
            ["pool", "state"], registry=r,
        )  # fmt: skip
        self.workers_desired = Gauge(
            "fleetgate_workers_desired", "Workers the autoscaler wants.", ["pool"], registry=r
        )
        self.pool_failed = Gauge(
            "fleetgate_pool_failed", "1 when the pool's workers failed too often; it starts no more.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.cold_starts = Counter(
            "fleetgate_cold_starts", "Worker processes started that became ready.", ["pool"], registry=r
        )
        self.cold_start_seconds = Histogram(
            "fleetgate_cold_start_seconds", "Cold start time by phase (init, download, load, compile; total)",
            ["pool", "phase"], buckets=_STARTUP, registry=r,
        )  # fmt: skip
        self.held = Counter(
            "fleetgate_held_requests", "Requests held because no worker of the pool was ready.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.hold_seconds = Histogram(
            "fleetgate_hold_seconds", "Time held requests waited for a worker.", ["pool"],
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.wakeups = Counter("fleetgate_worker_wakeups", "Sleeping workers woken.", ["pool"], registry=r)
        self.wake_seconds = Histogram(
            "fleetgate_worker_wake_seconds", "Time a wake-up took.", ["pool"], buckets=_LATENCY, registry=r
        )
        self.restarts = Counter(
            "fleetgate_worker_restarts", "Workers restarted after a crash.", ["pool"], registry=r
        )

        self.discovery_connected = Gauge(
            "fleetgate_discovery_connected",
            "1 while the pool's Kubernetes watch is connected; 0: the API server is unreachable and the "
            "last known endpoints keep serving.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.discovery_down_seconds = Gauge(
            "fleetgate_discovery_down_seconds", "Seconds the pool's Kubernetes watch has been disconnected.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.discovery_relists = Gauge(
            "fleetgate_discovery_relists", "Relists after 410 Gone (an expired resourceVersion).", ["pool"],
            registry=r,
        )  # fmt: skip
        self.discovery_events = Gauge(
            "fleetgate_discovery_events",
            "Watch events applied to the pool's endpoints.",
            ["pool"],
            registry=r,
        )
        self.scaling_leader = Gauge(
            "fleetgate_scaling_leader", "1 on the gateway replica that holds the scaling Lease.", registry=r
        )

    def discovery_status(
        self, pool: str, connected: bool, down_for: float | None, relists: int, events: int
    ) -> None:
        self.discovery_connected.labels(pool).set(1 if connected else 0)
        self.discovery_down_seconds.labels(pool).set(down_for or 0.0)
        self.discovery_relists.labels(pool).set(relists)
        self.discovery_events.labels(pool).set(events)

    def forget_endpoint(self, pool: str, endpoint: str) -> None:
        """A discovered endpoint left for good (a deleted pod): drop its series, so pod churn does not grow
        the scrape without end. Counters keep their history."""
        series: list[tuple[Gauge, tuple[str, ...]]] = [
            (self.healthy, (pool, endpoint)),
            (self.in_flight, (pool, endpoint)),
            (self.pending_prefill, (pool, endpoint)),
            (self.kv_events_live, (pool, endpoint)),
            *((self.load, (pool, endpoint, kind)) for kind in ("running", "waiting", "kv_usage")),
        ]
        for gauge, labels in series:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def route_decided(self, pool: str, reason: str) -> None:
        self.route_decisions.labels(pool, reason).inc()

    def refresh(self, queues: Mapping[str, int] | None = None) -> None:
        """Copy endpoint state into gauges; called at scrape time, never on the request path."""
        in_flight = dict.fromkeys(queues or {}, 0)
        for pool, depth in (queues or {}).items():
            self.queue_depth.labels(pool).set(depth)
        for e in self.fleet.endpoints():
            in_flight[e.pool] = in_flight.get(e.pool, 0) + e.in_flight
            self.pending_prefill.labels(e.pool, e.name).set(e.pending_prefill)
            if e.kv_events is not None:
                self.kv_events_live.labels(e.pool, e.name).set(1 if e.kv_live else 0)
            self.healthy.labels(e.pool, e.name).set(1 if e.routable() else 0)
            self.in_flight.labels(e.pool, e.name).set(e.in_flight)
            if e.load is not None:
                self.load.labels(e.pool, e.name, "running").set(e.load.running)
                self.load.labels(e.pool, e.name, "waiting").set(e.load.waiting)
                self.load.labels(e.pool, e.name, "kv_usage").set(e.load.kv_usage)
        for pool, n in in_flight.items():
            self.pool_in_flight.labels(pool).set(n)

    # ---- worker pools' reports (scaling.pools.PoolsObserver) ---------------------------------------------
    def worker_restarted(self, pool: str, count: int) -> None:
        self.restarts.labels(pool).inc(count)

    def worker_woken(self, pool: str, count: int, seconds: float | None) -> None:
        self.wakeups.labels(pool).inc(count)
        if seconds is not None:
            self.wake_seconds.labels(pool).observe(seconds)

    def cold_start(self, pool: str, total: float, phases: Mapping[str, float]) -> None:
        self.cold_starts.labels(pool).inc()
        self.cold_start_seconds.labels(pool, "total").observe(total)
        for phase, seconds in phases.items():
            self.cold_start_seconds.labels(pool, phase).observe(seconds)

    def pool_status(self, pool: str, states: Mapping[str, int], desired: int, failed: bool) -> None:
        for state, n in states.items():
            self.workers.labels(pool, state).set(n)
        self.workers_desired.labels(pool).set(desired)
        self.pool_failed.labels(pool).set(1 if failed else 0)

    # ---- relay hooks -----------------------------------------------------------------------------------
    def attempt_failed(self, endpoint: Endpoint, reason: str) -> None:
        self.upstream_errors.labels(endpoint.name, reason).inc()

    def retried(self, call: Call) -> None:
        self.retries.labels(call.pool).inc()

    def first_event(self, call: Call, seconds: float) -> None:
        self.ttft.labels(call.pool).observe(seconds)

    def event_gap(self, call: Call, seconds: float) -> None:
        # Once per relayed event: the pool's child is looked up once, not through labels() each time.
        child = self._gap_of.get(call.pool)
        if child is None:
            child = self._gap_of[call.pool] = self.gaps.labels(call.pool)
        child.observe(seconds)

    # ---- one per answered request -------------------------------------------------------------------
    def answered(self, x: Exchange) -> None:
        """Count and log an exchange once, whoever answered it."""
        call = x.call
        status = x.outcome
        endpoint = call.endpoint.name if call is not None and call.endpoint is not None else "none"
        seconds = time.monotonic() - x.arrived
        usage = call.usage if call is not None else None
        tenant = self.tenant_label(x.tenant)
        self.requests.labels(x.route, x.model, x.pool, endpoint, str(status), tenant).inc()
        if call is not None:
            self.e2e.labels(x.pool).observe(seconds)
        if usage:
            self.tokens.labels(x.pool, "in", tenant).inc(int(usage.get("prompt_tokens") or 0))
            self.tokens.labels(x.pool, "out", tenant).inc(int(usage.get("completion_tokens") or 0))
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and details.get("cached_tokens"):
                self.tokens.labels(x.pool, "cached", tenant).inc(int(details["cached_tokens"]))
        # Probes that pass arrive every few seconds from every kubelet and load balancer: debug, not info.
        level = logging.DEBUG if x.route in _PROBES and status == 200 else logging.INFO
        if access.isEnabledFor(level):
            access.log(
                level,
                "request",
                extra={
                    "request_id": x.request_id,
                    "method": x.method,
                    "path": x.route if x.route != "unknown" else x.path[:200],
                    "status": status,
                    "tenant": x.tenant,
                    "model": x.model,
                    "pool": x.pool,
                    "endpoint": endpoint,
                    "stream": call.stream if call is not None else False,
                    "attempts": call.attempts if call is not None else 0,
                    "seconds": round(seconds, 4),
                    "prompt_tokens": (usage or {}).get("prompt_tokens"),
                    "completion_tokens": (usage or {}).get("completion_tokens"),
                },
            )
