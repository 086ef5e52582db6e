"""The gateway's wiring root: every pool's endpoints, router, flow queue, workers and background loops, built
from the fleet file, started and stopped by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from fleetgate.admission.adapters import AdapterLoader
from fleetgate.admission.auth import Keyring
from fleetgate.admission.flow import FlowQueue
from fleetgate.admission.limits import RequestLimits
from fleetgate.api.asgi import Exchange
from fleetgate.api.metrics import GatewayMetrics
from fleetgate.config import FleetConfig, PoolConfig
from fleetgate.fleet.k8s_discovery import DiscoveryHooks, EndpointSource
from fleetgate.fleet.kube import Api, connect
from fleetgate.fleet.kv_events import KVEventSubscriber
from fleetgate.fleet.monitor import Monitor, MonitorSettings
from fleetgate.fleet.prefix_index import ApproxIndex
from fleetgate.fleet.sessions import SessionTable
from fleetgate.fleet.state import Endpoint, FleetState, PoolState
from fleetgate.protocol import ServiceUnavailableError
from fleetgate.relay import PoolRoute, Relay, RetryPolicy, Timeouts
from fleetgate.routing.capacity import Saturation
from fleetgate.routing.prompt import PromptHasher
from fleetgate.routing.router import PoolRouter
from fleetgate.routing.settings import RoutingSettings
from fleetgate.scaling.k8s_scaling import KubeScaling
from fleetgate.scaling.kubernetes import PodTarget
from fleetgate.scaling.leader import LeaseElector
from fleetgate.scaling.load_board import LoadBoard
from fleetgate.scaling.pools import WorkerFleet, WorkerPool
from fleetgate.scaling.spec import PoolSpec, RuleKind, ScalingRule, WorkerSpec
from fleetgate.tenancy.rows import UsageRow
from fleetgate.tenancy.runtime import Tenancy, Usage, cost

__all__ = ["Gateway", "Pool", "pool_spec", "routing_settings"]

log = logging.getLogger("fleetgate.gateway")
# Seconds an idle upstream connection is kept for reuse: under the 5 s after which uvicorn (vLLM, the
# simulator) closes it.
UPSTREAM_KEEPALIVE = 4.0

# How many large request bodies (api/app.py's OFFLOAD_HASHING_BYTES) may be parsed and hashed at once: one on
# the event loop and one in a thread keep both busy; more only multiply the memory their trees take.
LARGE_BODIES_AT_ONCE = 2


def pool_spec(pc: PoolConfig) -> PoolSpec:
    """The fleet file's `workers:` as the provider's and policy's plain values."""
    wc = pc.workers
    assert wc is not None
    worker = WorkerSpec(
        engine=wc.engine or "",
        model=wc.model,
        served_model_name=wc.served_name,
        engine_args=tuple(wc.engine_args),
        gpus_per_worker=wc.worker_gpus,
        sleep=wc.sleep,
        sleep_level=wc.sleep_level,
        env=dict(wc.env),
        hf_token_env=wc.hf_token_env,
        hf_token_file=wc.hf_token_file,
        offline=wc.offline,
    )
    return PoolSpec(
        name=pc.name,
        worker=worker,
        min_workers=wc.min_workers,
        max_workers=wc.max_workers,
        idle_timeout=wc.idle_timeout,
        rule=ScalingRule(RuleKind(wc.scaling.rule), wc.scaling.target),
        stabilization_window=wc.stabilization_window,
        scale_up_limit=wc.scale_up_limit,
        scale_up_period=wc.scale_up_period,
        backoff_base=wc.backoff_base,
        backoff_cap=wc.backoff_cap,
        max_failures=wc.max_failures,
        startup_timeout=wc.startup_timeout,
        max_hold=wc.startup_timeout if wc.max_hold is None else wc.max_hold,
        drain_deadline=wc.drain_deadline,
        stop_grace=wc.stop_grace,
        interval=wc.scaling.interval,
        gpus=None if wc.gpus is None else tuple(wc.gpus),
        log_dir=wc.log_dir,
    )


def routing_settings(pc: PoolConfig) -> RoutingSettings:
    """The fleet file's `routing:` (with the scrape and stall settings) as the router's plain values."""
    rc = pc.routing
    sat = rc.saturation
    return RoutingSettings(
        scorers=dict(rc.scorers),
        strategy=rc.picker,
        saturation=Saturation(
            sat.max_waiting, sat.max_kv_usage, pc.scrape.stale_after, pc.stall_after, sat.max_imbalance
        ),
        block_size=rc.block_size,
        prefill_tokens_per_request=rc.prefill_tokens_per_request,
        ring_prefix_blocks=rc.ring.prefix_blocks,
        ring_load_bound=rc.ring.load_bound,
    )


@dataclass
class Pool:
    config: PoolConfig
    route: PoolRoute
    state: PoolState
    hasher: PromptHasher
    flow: FlowQueue
    limits: RequestLimits
    upstream_model: dict[str, str] = field(default_factory=dict)  # public name -> name sent upstream
    session_header: bytes = b"x-session-id"
    # Whether requests need their prompt hashed (prefix scorer) or their history signed (session scorer).
    wants_prompt: bool = True
    loader: AdapterLoader | None = None  # set at start when the pool declares adapters
    workers: WorkerPool | None = None  # the pool's started workers, when it has `workers:`
    source: EndpointSource | None = None  # where its endpoints come from, when it has `discovery:`
    monitor: Monitor | None = None  # set at start
    subscriber: KVEventSubscriber | None = None  # set at start when its endpoints publish KV events


def _room(router: PoolRouter, endpoints: list[Endpoint]) -> Callable[[], float]:
    """How many more requests the pool takes before every endpoint is saturated (the flow queue's gate).

    Endpoints without fresh figures cannot be judged and never hold requests back; with nothing routable
    the relay answers 503 at once, so that does not hold them either.
    """
    sat = router.saturation

    def room() -> float:
        now = time.monotonic()
        total = 0.0
        routable = False
        for e in endpoints:
            if not e.routable() or e.frozen(now, sat.stall_after):
                continue
            routable = True
            total += sat.room(e, now)
        return total if routable else float("inf")

    return room


def _on_change(pool: Pool) -> Callable[[Endpoint], None]:
    def changed(e: Endpoint) -> None:
        pool.route.router.track_capacity(e)
        pool.flow.kick()

    return changed


def _discovery_hooks(pool: Pool, metrics: GatewayMetrics) -> DiscoveryHooks:
    """What happens when discovery adds or drops one of the pool's endpoints (the monitor and subscriber
    exist once the gateway has started)."""

    def added(e: Endpoint) -> None:
        if pool.monitor is not None:
            pool.monitor.watch(e)
        if pool.subscriber is not None:
            pool.subscriber.watch(e)

    def removed(e: Endpoint) -> None:
        if pool.monitor is not None:
            pool.monitor.unwatch(e)
        if pool.subscriber is not None:
            pool.subscriber.unwatch(e)
        metrics.forget_endpoint(e.pool, e.name)

    return DiscoveryHooks(added, removed, pool.flow.kick)


class Gateway:
    """Everything one gateway holds; built by `create_app`, started and stopped by the lifespan."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.fleet = FleetState()
        self.metrics = GatewayMetrics(self.fleet)
        self.pools: dict[str, Pool] = {}
        self.model_pool: dict[str, Pool] = {}
        self.discover_pools: list[Pool] = []  # pools that serve whatever their upstreams list
        self.tenancy = Tenancy(config)
        self.keyring = Keyring(
            ((k.name, k.secret.get_secret_value(), k.priority) for k in config.keys), self.tenancy.cache
        )
        self.metrics.tenant_label = self.tenancy.label
        self.tenancy.on_write = self.metrics.usage_rows.labels("written").inc
        self.tenancy.on_drop = self.metrics.usage_rows.labels("dropped").inc
        self.tenancy.on_limited = lambda tenant, reason: self.metrics.limited.labels(tenant, reason).inc()
        # SIGTERM came: /ready fails, requests are still served (the pre-stop delay).
        self.draining = False
        # The pre-stop delay is over: new requests are refused while in-flight ones finish.
        self.closing = False
        self.exchanges: set[Exchange] = set()  # forwarded requests in flight, for the drain
        self.session: aiohttp.ClientSession | None = None
        self.relay: Relay | None = None
        self.monitors: list[tuple[Monitor, list[Endpoint]]] = []
        self.subscribers: list[KVEventSubscriber] = []
        self.kube: Api | None = None  # the API server's client, when a pool uses Kubernetes
        for pc in config.pools:
            self._add_pool(pc)
        started = [p.workers for p in self.pools.values() if p.workers is not None]
        self.workers = WorkerFleet(started, self.metrics) if started else None
        # The body is read before its model (and so its pool) is known: the largest pool limit applies.
        self.max_body_bytes = max(pc.limits.max_body_bytes for pc in config.pools)
        # Large bodies parsed at once (api/app.py): a 4 MiB body parses into ~40 MB of objects.
        self.large_bodies = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)

    def _add_pool(self, pc: PoolConfig) -> None:
        endpoints = [
            Endpoint(
                name=e.name,
                url=e.url,
                pool=pc.name,
                api_key=e.secret.get_secret_value() if e.secret is not None else None,
                weight=e.weight,
                kv_events=e.kv_events,
            )
            for e in pc.endpoints
        ]
        rc = pc.routing
        state = PoolState(pc.name, endpoints, ApproxIndex(rc.index_blocks), SessionTable(rc.session.ttl))
        self.fleet.pools[pc.name] = state
        t = pc.timeouts
        kd = pc.discovery.kubernetes if pc.discovery is not None else None
        router = PoolRouter(state, routing_settings(pc), self.metrics.route_decided)
        route = PoolRoute(
            name=pc.name,
            endpoints=endpoints,
            router=router,
            timeouts=Timeouts(
                t.connect, t.first_byte_stream, t.first_byte_nonstream, t.idle_gap, t.total, pc.stall_after
            ),
            retries=RetryPolicy(pc.retries.attempts, pc.retries.backoff_base, pc.retries.backoff_max),
            debug_headers=rc.debug_headers,
        )
        room = _room(router, endpoints)
        flow = FlowQueue(
            pc.name,
            room,
            pc.limits.max_queue,
            pc.limits.max_queue_wait,
            on_wait=lambda: self._held(),
            fair=self.config.tenancy.fair_share,
        )
        pool = Pool(
            pc,
            route,
            state,
            PromptHasher(rc.tokenizer, rc.block_size),
            flow,
            RequestLimits(pc.limits.max_tokens_default, pc.limits.max_tokens_cap, pc.limits.max_n),
            session_header=rc.session.header.encode(),
            wants_prompt=router.needs_prompt,
        )
        if pc.workers is not None:
            pool.workers = wp = WorkerPool(
                pool_spec(pc), endpoints, state, flow, kubernetes=pc.workers.provider == "kubernetes"
            )
            flow.capacity = lambda: wp.room(room())
        if kd is not None:
            pool.source = EndpointSource(
                pc.name, kd, endpoints, state, _discovery_hooks(pool, self.metrics),
                models=frozenset(pc.model_map()),
                max_streams=pool.workers.max_streams if pool.workers is not None else None,
            )  # fmt: skip
        self.pools[pc.name] = pool
        for public, upstream in pc.model_map().items():
            pool.upstream_model[public] = upstream
            self.model_pool[public] = pool
        for adapter in pc.adapters:
            pool.upstream_model.setdefault(adapter.name, adapter.name)
            self.model_pool.setdefault(adapter.name, pool)
        if not pc.model_map():
            self.discover_pools.append(pool)

    def _held(self) -> None:
        if self.workers is not None:
            self.workers.nudge()

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        # Keys are loaded before the first request is served.
        await self.tenancy.start()
        # A request sent on a connection the server is closing fails before any byte and would count against
        # a healthy endpoint: idle connections go before the server closes them.
        connector = aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=60, enable_cleanup_closed=True, keepalive_timeout=UPSTREAM_KEEPALIVE
        )
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self.relay = Relay(self.session, self.metrics)
        # Each pool is watched with its own health and scrape settings.
        for pool in self.pools.values():
            pc = pool.config
            h, sc = pc.health, pc.scrape
            settings = MonitorSettings(
                h.interval, h.timeout, h.path, h.discovery_interval, sc.interval, sc.timeout
            )
            if pc.adapters:
                paths = {a.name: a.path for a in pc.adapters}
                pool.loader = AdapterLoader(self.session, pool.route.endpoints, paths, pc.timeouts.total)
            monitor = Monitor(self.session, settings, _on_change(pool))
            pool.monitor = monitor
            self.monitors.append((monitor, pool.route.endpoints))
            if pool.workers is not None:
                pool.workers.monitor = monitor
            kd = pc.discovery.kubernetes if pc.discovery is not None else None
            if any(e.kv_events for e in pool.route.endpoints) or (kd is not None and kd.kv_events_port):
                rc = pc.routing
                subscriber = KVEventSubscriber(pool.state.precise, rc.kv_events_topic, rc.kv_events_silence)
                subscriber.start(pool.route.endpoints)
                pool.subscriber = subscriber
                self.subscribers.append(subscriber)
        # One round of probes before serving, so /ready and the first requests see the real fleet.
        await asyncio.gather(*(m.probe(e) for m, endpoints in self.monitors for e in endpoints))
        for m, endpoints in self.monitors:
            m.start(endpoints)
        await self._start_kubernetes()
        if self.workers is not None:
            await self.workers.start()

    async def _start_kubernetes(self) -> None:
        """Discovery watches, and the scaling of Deployments with its leader election."""
        sources = [p.source for p in self.pools.values() if p.source is not None]
        if not sources:
            return
        kc = self.config.kubernetes
        self.kube = api = await connect(kc)
        for src in sources:
            src.start(api, kc.watch_timeout, kc.retry_max)
        # The first list before serving, when the API server answers soon; it keeps trying in the background.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.watch.synced.wait() for s in sources if s.watch is not None)),
                kc.request_timeout,
            )
        targets: dict[str, tuple[PoolSpec, PodTarget]] = {}
        for name, p in self.pools.items():
            wc = p.config.workers
            if p.workers is not None and p.source is not None and wc is not None and wc.deployment:
                targets[name] = (
                    p.workers.spec,
                    PodTarget(wc.deployment, p.config.workers_namespace, p.source),
                )
        if not targets or self.workers is None:
            return
        le = kc.leader_election
        first = next(iter(targets.values()))[1]
        namespace = le.namespace or os.environ.get("POD_NAMESPACE") or first.namespace
        identity = le.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaseElector(api, le.lease_name, namespace, identity, le.lease_duration, le.renew_interval)
        board = LoadBoard(api, le.lease_name, namespace, identity, le.lease_duration)
        fleet = self.workers
        self.workers.kube = KubeScaling(
            api, targets, elector, board, observe=fleet.observe, on_change=fleet.worker_changed,
            on_blocked=fleet.blocked_changed, watch_timeout=kc.watch_timeout, retry_max=kc.retry_max,
        )  # fmt: skip
        for name in targets:
            wp = fleet.pools[name]
            wp.blocked = lambda name=name: fleet.kube.provider.blocked(name) if fleet.kube else None  # type: ignore[misc]

    def ready(self) -> bool:
        """Serving: some endpoint is routable, or some pool of workers can start one for a request."""
        if self.draining:
            return False
        pools = self.workers.pools.values() if self.workers is not None else ()
        return self.fleet.any_routable() or any(wp.failure is None for wp in pools)

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.close()
        for p in self.pools.values():
            if p.source is not None:
                await p.source.stop()
        if self.kube is not None:
            await self.kube.close()
        for m, _ in self.monitors:
            await m.stop()
        for sub in self.subscribers:
            await sub.stop()
        if self.session is not None:
            await self.session.close()
        await self.tenancy.stop()  # after the drain: the ledger's last rows are written here

    # ---- lookups ---------------------------------------------------------------------------------------
    def pool_for(self, model: str) -> Pool | None:
        pool = self.model_pool.get(model)
        if pool is not None:
            return pool
        for p in self.discover_pools:
            if any(model in e.models for e in p.route.endpoints):
                return p
        if any(not e.models and e.routable() for p in self.discover_pools for e in p.route.endpoints):
            # An upstream that answers has not listed its models yet: the model may well be there. One
            # that is down does not hold up the answer.
            raise ServiceUnavailableError("the upstreams are not ready yet; retry shortly")
        return None

    async def finish(self, x: Exchange) -> None:
        """Settle what admission charged with the real usage, and queue the request's ledger row (no I/O
        unless the limits live in Redis)."""
        t = self.tenancy
        call = x.call
        used = Usage.of(call.usage if call is not None else None)
        if used is None:
            if x.gone and call is not None and call.endpoint is not None:
                # The client left mid-answer: the engine read the prompt and made what was relayed.
                used = Usage(math.ceil(x.prompt_bytes / 4), 0, call.events)
            else:
                used = Usage(0, 0, 0)
        if x.cache == "HIT":
            used = Usage(0, 0, 0)  # no engine worked for it
        try:
            if x.ticket is not None:
                await t.settle(x.ticket, x.model, used)
        finally:
            if t.ledger is not None and x.identity is not None:
                key = x.identity.key
                t.record(
                    UsageRow(
                        at=time.time(),
                        request_id=x.request_id,
                        tenant=x.tenant,
                        key_id=key.id if key is not None else None,
                        model=x.model,
                        pool=x.pool,
                        endpoint=x.route,
                        status=x.outcome,
                        prompt_tokens=used.prompt,
                        cached_tokens=used.cached,
                        output_tokens=used.output,
                        latency_ms=(time.monotonic() - x.arrived) * 1000,
                        cache_hit=x.cache == "HIT",
                        cost=cost(t.prices.get(x.model), used),
                    )
                )

    async def drain(self, deadline: float) -> None:
        """Let in-flight requests finish until `deadline` (monotonic); then end what is left with an error
        event (streams) or an error answer, never a silent cut."""
        await self._settle(deadline - time.monotonic())
        if self.exchanges:
            log.warning("drain deadline: ending %d request(s) still in flight", len(self.exchanges))
            error = ServiceUnavailableError("the gateway shut down before this request finished; retry")
            for x in list(self.exchanges):
                x.end(error)
            await self._settle(5.0)  # each sends its error event and goes

    async def _settle(self, seconds: float) -> None:
        handlers = [x.handler for x in self.exchanges if x.handler is not None]
        if handlers:
            await asyncio.wait(handlers, timeout=max(0.0, seconds))
