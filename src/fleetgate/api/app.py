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
from fleetgate.api.metrics import GatewayMetrics
from fleetgate.config import FleetConfig, PoolConfig
from fleetgate.fleet.monitor import Monitor, MonitorSettings
from fleetgate.fleet.state import Endpoint, FleetState, PoolState
from fleetgate.protocol import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    OpenAIError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    model_not_found,
)
from fleetgate.relay import Call, PoolRoute, Relay, RetryPolicy, Timeouts
from fleetgate.routing.picker import SCORERS, LoadScorer, Picker, RouteRequest, Scorer

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


@dataclass
class Tenant:
    name: str
    priority: int


@dataclass
class Pool:
    config: PoolConfig
    route: PoolRoute
    upstream_model: dict[str, str] = field(default_factory=dict)  # public name -> name sent upstream


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
        for pc in config.pools:
            self._add_pool(pc)
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
            )
            for e in pc.endpoints
        ]
        self.fleet.pools[pc.name] = PoolState(pc.name, endpoints)
        scorers: list[tuple[Scorer, float]] = []
        for name, weight in pc.routing.scorers.items():
            if name == "load":
                scorers.append((LoadScorer(pc.scrape.stale_after), weight))
            elif name not in SCORERS:
                log.debug("pool %s: scorer %r is not available in this version; ignored", pc.name, name)
        if not scorers:
            scorers.append((LoadScorer(pc.scrape.stale_after), 1.0))
        t = pc.timeouts
        route = PoolRoute(
            name=pc.name,
            endpoints=endpoints,
            picker=Picker(scorers),
            timeouts=Timeouts(t.connect, t.first_byte_stream, t.first_byte_nonstream, t.idle_gap, t.total),
            retries=RetryPolicy(pc.retries.attempts, pc.retries.backoff_base, pc.retries.backoff_max),
        )
        pool = Pool(pc, route)
        self.pools[pc.name] = pool
        for public, upstream in pc.model_map().items():
            pool.upstream_model[public] = upstream
            self.model_pool[public] = pool
        if not pool.upstream_model:
            self.discover_pools.append(pool)

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
            self.monitors.append((Monitor(self.session, settings), pool.route.endpoints))
        # One round of probes before serving, so /ready and the first requests see the real fleet.
        await asyncio.gather(*(m.probe(e) for m, endpoints in self.monitors for e in endpoints))
        for m, endpoints in self.monitors:
            m.start(endpoints)

    async def stop(self) -> None:
        for m, _ in self.monitors:
            await m.stop()
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
    extra = [(b"retry-after", str(RETRY_AFTER).encode())] if e.status in (429, 503) else []
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
                ready = not self.gw.draining and self.gw.fleet.any_routable()
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
        self._auth(headers)
        if gw.draining:
            raise ServiceUnavailableError("the gateway is shutting down")
        try:
            raw = await _read_body(receive, gw.max_body_bytes)
        except ConnectionResetError:
            return
        call, pool = self._prepare(path, raw, request_id)
        assert gw.relay is not None
        relay_task = asyncio.ensure_future(gw.relay.forward(call, pool.route, send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({relay_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if relay_task in done:
                relay_task.result()
            else:
                # The client left: cancelling closes the upstream connection, so the engine aborts at once.
                relay_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OpenAIError):
                    await relay_task
                gw.metrics.requests.labels(call.model, call.pool, _ep(call), "499").inc()
        finally:
            watcher.cancel()

    def _prepare(self, path: str, raw: bytes, request_id: str) -> tuple[Call, Pool]:
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
        call = Call(path=path, body=data, stream=stream, route=RouteRequest(model=upstream),
                    request_id=request_id, pool=pool.config.name, model=model)  # fmt: skip
        return call, pool


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
            self.gw.metrics.refresh()
            body = generate_latest(self.gw.metrics.registry)
            headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif path == "/admin/fleet":
            now = time.monotonic()
            pools = {
                name: [e.snapshot(now, p.config.scrape.stale_after) for e in p.route.endpoints]
                for name, p in self.gw.pools.items()
            }
            await _reply(send, 200, orjson.dumps({"draining": self.gw.draining, "pools": pools}), "admin")
        elif path == "/health":
            await _reply(send, 200, b"", "admin")
        else:
            await _error(send, NotFoundError(f"no route {path}"), "admin")


def create_app(config: FleetConfig) -> tuple[PublicApp, AdminApp]:
    gw = Gateway(config)
    return PublicApp(gw), AdminApp(gw)
