"""The tenant-facing ASGI app: a route table, and the path of a forwarded request (validate, admit, relay).

A plain ASGI application (a dict of routes, no framework on the hot path). `create_app(config)` builds the
gateway and its two apps: this one (the OpenAI routes, `/health`, `/ready`, `/version`) and the admin app.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from fleetgate import __version__
from fleetgate.admission.auth import Tenant
from fleetgate.admission.limits import apply_token_limits, priority
from fleetgate.api.admin import AdminApp
from fleetgate.api.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    disconnected,
    error,
    read_body,
    reply,
    request_id,
)
from fleetgate.api.downstream import Downstream
from fleetgate.api.gateway import Gateway, Pool
from fleetgate.config import FleetConfig
from fleetgate.protocol import (
    AuthenticationError,
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OpenAIError,
    RateLimitError,
    ServiceUnavailableError,
    model_not_found,
)
from fleetgate.relay import Call
from fleetgate.routing.prompt import PromptInfo
from fleetgate.routing.request import RouteRequest

__all__ = ["AdminApp", "PublicApp", "create_app"]

FORWARDED = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
}
# Bodies larger than this are hashed for prefix routing in a worker thread, off the event loop.
OFFLOAD_HASHING_BYTES = 64 * 1024


@dataclass
class Exchange:
    """One request as the route handlers see it."""

    scope: Scope
    receive: Receive
    send: Send
    path: str
    headers: Mapping[bytes, bytes]
    request_id: str


Handler = Callable[[Exchange], Awaitable[None]]


class PublicApp:
    """The tenant-facing ASGI app."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        forward: dict[str, Handler] = {"POST": self._forward}
        self.routes: dict[str, dict[str, Handler]] = {
            "/health": {"GET": self._health},
            "/ready": {"GET": self._ready},
            "/version": {"GET": self._version},
            "/v1/models": {"GET": self._models},
            **{path: forward for path in FORWARDED},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(self.gw, receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        headers = dict(scope["headers"])
        x = Exchange(scope, receive, send, path, headers, request_id(headers))
        try:
            methods = self.routes.get(path)
            if methods is None:
                raise NotFoundError(f"no route {path}")
            handler = methods.get(scope["method"])
            if handler is None:
                raise MethodNotAllowedError(scope["method"], allowed=methods)
            await handler(x)
        except OpenAIError as e:
            await error(send, e, x.request_id)

    # ---- small routes ----------------------------------------------------------------------------------
    async def _health(self, x: Exchange) -> None:
        await reply(x.send, 200, b"", x.request_id)

    async def _version(self, x: Exchange) -> None:
        await reply(x.send, 200, orjson.dumps({"version": __version__}), x.request_id)

    async def _ready(self, x: Exchange) -> None:
        ready = self.gw.ready()
        await reply(x.send, 200 if ready else 503, orjson.dumps({"ready": ready}), x.request_id)

    async def _models(self, x: Exchange) -> None:
        self._auth(x.headers)
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
        body = {"object": "list", "data": list(seen.values())}
        await reply(x.send, 200, orjson.dumps(body), x.request_id)

    def _auth(self, headers: Mapping[bytes, bytes]) -> Tenant:
        tenant = self.gw.keyring.tenant(headers)
        if tenant is None:
            self.gw.metrics.rejected.labels("auth").inc()
            raise AuthenticationError("missing or invalid API key: send `Authorization: Bearer <key>`")
        return tenant

    # ---- forwarded requests ----------------------------------------------------------------------------
    async def _forward(self, x: Exchange) -> None:
        gw = self.gw
        tenant = self._auth(x.headers)
        if gw.draining:
            raise ServiceUnavailableError("the gateway is shutting down")
        try:
            raw = await read_body(x.receive, gw.max_body_bytes)
        except ClientGone:
            return
        call, pool, body = self._prepare(x.path, raw, x.request_id)
        rank = priority(tenant, x.headers, pool.config.priority_header)
        if pool.wants_prompt:
            await _fingerprint(call, pool, body, x.headers, len(raw))
        serving = asyncio.ensure_future(self._serve(call, pool, rank, x.send))
        watcher = asyncio.ensure_future(disconnected(x.receive))
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

    async def _serve(self, call: Call, pool: Pool, rank: int, send: Send) -> None:
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
                waited = await pool.flow.admit(rank)
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
            changed |= apply_token_limits(body, pool.token_limits)
        elif kind == "responses":
            changed |= apply_token_limits(body, pool.token_limits, key="max_output_tokens")
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


def create_app(config: FleetConfig) -> tuple[PublicApp, AdminApp]:
    gw = Gateway(config)
    return PublicApp(gw), AdminApp(gw)
