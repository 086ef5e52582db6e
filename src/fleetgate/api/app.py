"""The gateway's HTTP surface: `create_app(config)` builds everything and tears it down in the lifespan.

A plain ASGI application (a dict of routes, no framework on the hot path): the public app serves the OpenAI
routes, `/health` and `/ready`; the admin app (its own address) serves `/metrics` and `/admin/fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client import generate_latest

from fleetgate import __version__
from fleetgate.admission.adapters import AdapterLoader
from fleetgate.admission.flow import FlowQueue
from fleetgate.api.downstream import Downstream
from fleetgate.api.metrics import GatewayMetrics
from fleetgate.api.workers import WorkerFleet, WorkerPool, pool_spec
from fleetgate.config import FleetConfig, PoolConfig
from fleetgate.fleet.kv_events import KVEventSubscriber
from fleetgate.fleet.monitor import Monitor, MonitorSettings
from fleetgate.fleet.prefix_index import ApproxIndex
from fleetgate.fleet.sessions import SessionTable
from fleetgate.fleet.state import Endpoint, FleetState, PoolState
from fleetgate.protocol import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    OpenAIError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    model_not_found,
)
from fleetgate.relay import Call, PoolRoute, Relay, RetryPolicy, Timeouts
from fleetgate.routing.prompt import PromptHasher, PromptInfo
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.router import PoolRouter

log = logging.getLogger("fleetgate.gateway")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

FORWARDED = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
}
# Seconds a client is told to wait when nothing can take its request.
RETRY_AFTER = 1
# Bodies larger than this are hashed for prefix routing in a worker thread, off the event loop.
OFFLOAD_HASHING_BYTES = 64 * 1024
PRIORITY_HEADER = b"x-fleetgate-priority"


@dataclass
class Tenant:
    name: str
    priority: int


@dataclass
class Pool:
    config: PoolConfig
    route: PoolRoute
    state: PoolState
    hasher: PromptHasher
    flow: FlowQueue
    upstream_model: dict[str, str] = field(default_factory=dict)  # public name -> name sent upstream
    session_header: bytes = b"x-session-id"
    # Whether requests need their prompt hashed (prefix scorer) or their history signed (session scorer).
    wants_prompt: bool = True
    loader: AdapterLoader | None = None  # set at start when the pool declares adapters
    workers: WorkerPool | None = None  # the pool's started workers, when it has `workers:`


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
            if not e.routable():
                continue
            routable = True
            load = e.fresh_load(now, sat.stale_after)
            if load is None:
                return float("inf")
            if load.kv_usage < sat.max_kv_usage:
                total += max(0.0, sat.max_waiting - e.queued(load))
        return total if routable else float("inf")

    return room


def _on_change(pool: Pool) -> Callable[[Endpoint], None]:
    def changed(e: Endpoint) -> None:
        pool.route.router.track_capacity(e)
        pool.flow.kick()

    return changed


def _hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Gateway:
    """Everything one gateway holds; built by `create_app`, started and stopped by the lifespan."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.fleet = FleetState()
        self.metrics = GatewayMetrics(self.fleet)
        self.pools: dict[str, Pool] = {}
        self.model_pool: dict[str, Pool] = {}
        self.discover_pools: list[Pool] = []  # pools that serve whatever their upstreams list
        # Keys are kept only as SHA-256 digests; a presented key is hashed and compared in constant time.
        self.keys: dict[bytes, Tenant] = {
            _hash_key(k.secret.get_secret_value()): Tenant(k.name, k.priority) for k in config.keys
        }
        self.draining = False
        self.session: aiohttp.ClientSession | None = None
        self.relay: Relay | None = None
        self.monitors: list[tuple[Monitor, list[Endpoint]]] = []
        self.subscribers: list[KVEventSubscriber] = []
        for pc in config.pools:
            self._add_pool(pc)
        started = [p.workers for p in self.pools.values() if p.workers is not None]
        self.workers = WorkerFleet(started, self.metrics) if started else None
        # The body is read before its model (and so its pool) is known: the largest pool limit applies.
        self.max_body_bytes = max(pc.limits.max_body_bytes for pc in config.pools)

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
        state = PoolState(
            pc.name, endpoints, approx=ApproxIndex(rc.index_blocks), sessions=SessionTable(rc.session.ttl)
        )
        self.fleet.pools[pc.name] = state
        router = PoolRouter(state, rc, pc.scrape.stale_after, self.metrics.route_decided)
        t = pc.timeouts
        route = PoolRoute(
            name=pc.name,
            endpoints=endpoints,
            router=router,
            timeouts=Timeouts(t.connect, t.first_byte_stream, t.first_byte_nonstream, t.idle_gap, t.total),
            retries=RetryPolicy(pc.retries.attempts, pc.retries.backoff_base, pc.retries.backoff_max),
            debug_headers=rc.debug_headers,
        )
        room = _room(router, endpoints)
        flow = FlowQueue(
            pc.name, room, pc.limits.max_queue, pc.limits.max_queue_wait, on_wait=lambda: self._held()
        )
        pool = Pool(
            pc,
            route,
            state,
            PromptHasher(rc.tokenizer, rc.block_size),
            flow,
            session_header=rc.session.header.encode(),
            wants_prompt=rc.picker != "round_robin"
            and (rc.scorers.get("prefix", 0) > 0 or rc.scorers.get("session", 0) > 0),
        )
        if pc.workers is not None:
            pool.workers = wp = WorkerPool(pc.workers, pool_spec(pc), endpoints, state, flow)
            flow.capacity = lambda: wp.room(room())
        self.pools[pc.name] = pool
        for public, upstream in pc.model_map().items():
            pool.upstream_model[public] = upstream
            self.model_pool[public] = pool
        for adapter in pc.adapters:
            pool.upstream_model.setdefault(adapter.name, adapter.name)
            self.model_pool.setdefault(adapter.name, pool)
        if not pc.models and pc.workers is None:
            self.discover_pools.append(pool)

    def _held(self) -> None:
        if self.workers is not None:
            self.workers.nudge()

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self.relay = Relay(self.session, self.metrics)
        # Each pool is watched with its own health and scrape settings.
        for pool in self.pools.values():
            pc = pool.config
            settings = MonitorSettings(
                pc.health.interval, pc.health.timeout, pc.health.path, pc.scrape.interval
            )
            if pc.adapters:
                paths = {a.name: a.path for a in pc.adapters}
                pool.loader = AdapterLoader(self.session, pool.route.endpoints, paths, pc.timeouts.total)
            monitor = Monitor(self.session, settings, _on_change(pool))
            self.monitors.append((monitor, pool.route.endpoints))
            if pool.workers is not None:
                pool.workers.monitor = monitor
            if any(e.kv_events for e in pool.route.endpoints):
                rc = pc.routing
                subscriber = KVEventSubscriber(pool.state.precise, rc.kv_events_topic, rc.kv_events_silence)
                subscriber.start(pool.route.endpoints)
                self.subscribers.append(subscriber)
        # One round of probes before serving, so /ready and the first requests see the real fleet.
        await asyncio.gather(*(m.probe(e) for m, endpoints in self.monitors for e in endpoints))
        for m, endpoints in self.monitors:
            m.start(endpoints)
        if self.workers is not None:
            await self.workers.start()

    def ready(self) -> bool:
        """Serving: some endpoint is routable, or some pool of workers can start one for a request."""
        if self.draining:
            return False
        pools = self.workers.pools.values() if self.workers is not None else ()
        return self.fleet.any_routable() or any(wp.failure is None for wp in pools)

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.close()
        for m, _ in self.monitors:
            await m.stop()
        for sub in self.subscribers:
            await sub.stop()
        if self.session is not None:
            await self.session.close()

    # ---- lookups ---------------------------------------------------------------------------------------
    def pool_for(self, model: str) -> Pool | None:
        pool = self.model_pool.get(model)
        if pool is not None:
            return pool
        for p in self.discover_pools:
            if any(model in e.models for e in p.route.endpoints):
                return p
        if any(not e.models for p in self.discover_pools for e in p.route.endpoints):
            # Some upstream has not told us its models yet: the model may well be there.
            raise ServiceUnavailableError("the upstreams are not ready yet; retry shortly")
        return None

    def tenant(self, headers: Mapping[bytes, bytes]) -> Tenant | None:
        if not self.keys:
            return Tenant("anonymous", 0)
        auth = headers.get(b"authorization", b"").decode(errors="replace")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = _hash_key(token.strip())
        for known, tenant in self.keys.items():
            if hmac.compare_digest(known, digest):
                return tenant
        return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes", param="body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reply(
    send: Send, status: int, body: bytes, request_id: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, e: OpenAIError, request_id: str) -> None:
    retry_after = e.retry_after or RETRY_AFTER
    extra = [(b"retry-after", str(retry_after).encode())] if e.status in (429, 503) else []
    await _reply(send, e.status, e.to_json(), request_id, extra)


def _request_id(headers: Mapping[bytes, bytes]) -> str:
    given = headers.get(b"x-request-id", b"").decode(errors="replace").strip()
    return given[:128] if given else os.urandom(12).hex()


class PublicApp:
    """The tenant-facing ASGI app."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(self.gw, receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        headers = dict(scope["headers"])
        request_id = _request_id(headers)
        try:
            if path == "/health" and method == "GET":
                await _reply(send, 200, b"", request_id)
            elif path == "/version" and method == "GET":
                await _reply(send, 200, orjson.dumps({"version": __version__}), request_id)
            elif path == "/ready" and method == "GET":
                ready = self.gw.ready()
                await _reply(send, 200 if ready else 503, orjson.dumps({"ready": ready}), request_id)
            elif path == "/v1/models" and method == "GET":
                self._auth(headers)
                await _reply(send, 200, orjson.dumps(self._models()), request_id)
            elif path in FORWARDED and method == "POST":
                await self._forward(scope, receive, send, path, headers, request_id)
            elif path in FORWARDED or path in ("/v1/models", "/health", "/ready"):
                await _error(send, OpenAIError(f"method {method} not allowed", status=405), request_id)
            else:
                await _error(send, NotFoundError(f"no route {path}"), request_id)
        except OpenAIError as e:
            await _error(send, e, request_id)

    def _auth(self, headers: Mapping[bytes, bytes]) -> Tenant:
        tenant = self.gw.tenant(headers)
        if tenant is None:
            self.gw.metrics.rejected.labels("auth").inc()
            raise AuthenticationError("missing or invalid API key: send `Authorization: Bearer <key>`")
        return tenant

    def _models(self) -> dict[str, Any]:
        seen: dict[str, dict[str, Any]] = {}
        now = int(time.time())
        for public, pool in self.gw.model_pool.items():
            seen[public] = {"id": public, "object": "model", "created": now, "owned_by": "fleetgate",
                            "root": pool.upstream_model[public], "parent": None}  # fmt: skip
        for pool in self.gw.discover_pools:
            for e in pool.route.endpoints:
                for m in sorted(e.models):
                    seen.setdefault(m, {"id": m, "object": "model", "created": now, "owned_by": "fleetgate",
                                        "root": m, "parent": None})  # fmt: skip
        return {"object": "list", "data": list(seen.values())}

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        headers: Mapping[bytes, bytes],
        request_id: str,
    ) -> None:
        gw = self.gw
        tenant = self._auth(headers)
        if gw.draining:
            raise ServiceUnavailableError("the gateway is shutting down")
        try:
            raw = await _read_body(receive, gw.max_body_bytes)
        except ConnectionResetError:
            return
        call, pool, body = self._prepare(path, raw, request_id)
        priority = _priority(tenant, headers, pool)
        if pool.wants_prompt:
            await _fingerprint(call, pool, body, headers, len(raw))
        serving = asyncio.ensure_future(self._serve(call, pool, priority, send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({serving, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if serving in done:
                serving.result()
            else:
                # The client left: cancelling closes the upstream connection, so the engine aborts at once.
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError, OpenAIError):
                    await serving
                gw.metrics.requests.labels(call.model, call.pool, _ep(call), "499").inc()
        finally:
            watcher.cancel()

    async def _serve(self, call: Call, pool: Pool, priority: int, send: Send) -> None:
        """Wait for room in the pool (keep-alives going out to a waiting stream), then relay."""
        gw = self.gw
        assert gw.relay is not None
        downstream = Downstream(send, call.request_id, gw.config.keepalive_after) if call.stream else None
        if downstream is not None:
            downstream.hold()
        admitted = False
        try:
            adapter = call.route.adapter
            if pool.loader is not None and adapter is not None and pool.loader.needed(adapter):
                await pool.loader.ensure(adapter)
            wp = pool.workers
            _raise_if_failed(pool)
            held = wp is not None and wp.cold()  # no worker ready: held while one starts or wakes
            if held:
                gw.metrics.held.labels(pool.config.name).inc()
            try:
                waited = await pool.flow.admit(priority)
            except OpenAIError as e:
                gw.metrics.shed.labels(
                    pool.config.name, "queue_timeout" if e.status == 503 else "saturated"
                ).inc()
                if held and isinstance(e, RateLimitError):
                    # Nothing is wrong with the client's pace: the pool is starting and its queue is full.
                    raise ServiceUnavailableError(
                        f"pool '{pool.config.name}' is starting a worker and its queue is full",
                        retry_after=e.retry_after,
                    ) from None
                raise
            admitted = True
            if waited:
                gw.metrics.queue_wait.labels(pool.config.name).observe(waited)
            if held:
                gw.metrics.hold_seconds.labels(pool.config.name).observe(waited)
            _raise_if_failed(pool)  # it may have failed while the request was held
            await gw.relay.forward(call, pool.route, downstream.send if downstream is not None else send)
        except OpenAIError as e:
            if downstream is None or not downstream.started:
                raise
            await downstream.fail(e)
        finally:
            if downstream is not None:
                await downstream.release()
            if admitted:
                if pool.workers is not None:
                    pool.workers.last_active = time.monotonic()
                pool.flow.done()

    def _prepare(self, path: str, raw: bytes, request_id: str) -> tuple[Call, Pool, dict[str, Any]]:
        """Validate before any byte goes upstream; rewrite the body only when something must change."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise BadRequestError(f"the body is not valid JSON: {e}", param="body") from None
        if not isinstance(body, dict):
            raise BadRequestError("the body must be a JSON object", param="body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequestError("`model` is required and must be a string", param="model")
        pool = self.gw.pool_for(model)
        if pool is None:
            self.gw.metrics.rejected.labels("unknown_model").inc()
            raise model_not_found(model)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequestError("`stream` must be a boolean", param="stream")
        changed = False
        upstream = pool.upstream_model.get(model, model)
        if upstream != model:
            body["model"] = upstream
            changed = True
        kind = FORWARDED[path]
        if kind in ("chat", "completions"):
            changed |= _apply_token_limits(body, pool.config)
        elif kind == "responses":
            changed |= _apply_token_limits(body, pool.config, key="max_output_tokens")
        data = orjson.dumps(body) if changed else raw
        adapter = upstream if _is_adapter(pool, upstream) else None
        call = Call(path=path, body=data, stream=stream, route=RouteRequest(model=upstream, adapter=adapter),
                    request_id=request_id, pool=pool.config.name, model=model)  # fmt: skip
        return call, pool, body


def _raise_if_failed(pool: Pool) -> None:
    """A pool whose workers failed too often answers why, at once."""
    if pool.workers is not None and pool.workers.failure is not None:
        raise ServiceUnavailableError(f"pool '{pool.config.name}' failed: {pool.workers.failure}")


def _is_adapter(pool: Pool, model: str) -> bool:
    return any(a.name == model for a in pool.config.adapters) or any(
        model in e.adapters for e in pool.route.endpoints
    )


def _priority(tenant: Tenant, headers: Mapping[bytes, bytes], pool: Pool) -> int:
    given = headers.get(PRIORITY_HEADER) if pool.config.priority_header else None
    if given is None:
        return tenant.priority
    try:
        return int(given)
    except ValueError:
        raise BadRequestError(
            "the x-fleetgate-priority header must be an integer", param="x-fleetgate-priority"
        ) from None


async def _fingerprint(
    call: Call, pool: Pool, body: dict[str, Any], headers: Mapping[bytes, bytes], size: int
) -> None:
    """Fill in the prompt's block keys and the session for the prefix and session scorers."""
    kind = FORWARDED[call.path]
    info: PromptInfo | None
    if size > OFFLOAD_HASHING_BYTES:
        info = await asyncio.to_thread(pool.hasher.info, kind, body, call.route.adapter)
    else:
        info = pool.hasher.info(kind, body, call.route.adapter)
    route = call.route
    if info is not None:
        route.keys, route.tokens, route.session = info.keys, info.tokens, info.session
    named = headers.get(pool.session_header)
    if named:
        route.session = named


def _ep(call: Call) -> str:
    return call.endpoint.name if call.endpoint else "none"


def _apply_token_limits(body: dict[str, Any], pc: PoolConfig, key: str = "max_tokens") -> bool:
    limits = pc.limits
    names = [key, "max_completion_tokens"] if key == "max_tokens" else [key]
    given = [(n, body[n]) for n in names if body.get(n) is not None]
    for name, value in given:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequestError(f"`{name}` must be a positive integer", param=name)
        if value > limits.max_tokens_cap:
            raise BadRequestError(
                f"`{name}` is {value}, above this deployment's cap of {limits.max_tokens_cap}", param=name
            )
    if not given:
        body[key] = limits.max_tokens_default
        return True
    return False


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(gw: Gateway, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await gw.start()
            except Exception as e:  # a failed start must reach the operator, not vanish
                await send({"type": "lifespan.startup.failed", "message": str(e)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await gw.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


class AdminApp:
    """Operator-facing: metrics and fleet state, on the admin address only."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # served with lifespan="off": the public app owns startup and shutdown
        path = scope["path"]
        if path == "/metrics":
            self.gw.metrics.refresh({name: len(p.flow) for name, p in self.gw.pools.items()})
            if self.gw.workers is not None:
                self.gw.workers.refresh_metrics()
            body = generate_latest(self.gw.metrics.registry)
            headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif path == "/admin/fleet":
            now = time.monotonic()
            pools = {name: _pool_view(self.gw, p, now) for name, p in self.gw.pools.items()}
            await _reply(send, 200, orjson.dumps({"draining": self.gw.draining, "pools": pools}), "admin")
        elif path == "/health":
            await _reply(send, 200, b"", "admin")
        else:
            await _error(send, NotFoundError(f"no route {path}"), "admin")


def _pool_view(gw: Gateway, pool: Pool, now: float) -> dict[str, Any]:
    endpoints = []
    for e in pool.route.endpoints:
        view = e.snapshot(now, pool.config.scrape.stale_after)
        view["saturated"] = pool.route.router.saturation.of(e, now)
        view["approx_index_blocks"] = pool.state.approx.blocks(e.name)
        if e.kv_events is not None:
            view["precise_index_blocks"] = pool.state.precise.blocks(e.name)
        endpoints.append(view)
    return {
        "routing": {
            "picker": pool.config.routing.picker,
            "scorers": pool.config.routing.scorers,
            "tokenizer": pool.config.routing.tokenizer,
        },
        "queue": {"waiting": len(pool.flow), "shed": pool.flow.shed, "timed_out": pool.flow.timed_out},
        "sessions": len(pool.state.sessions),
        "endpoints": endpoints,
        **_workers_view(gw, pool, now),
    }


def _workers_view(gw: Gateway, pool: Pool, now: float) -> dict[str, Any]:
    wp = pool.workers
    if wp is None or gw.workers is None:
        return {}
    name = pool.config.name
    return {
        "workers": [w.snapshot(now) for w in gw.workers.workers(name)],
        "workers_desired": gw.workers.desired(name),
        "failure": wp.failure,
    }


def create_app(config: FleetConfig) -> tuple[PublicApp, AdminApp]:
    gw = Gateway(config)
    return PublicApp(gw), AdminApp(gw)
