"""The tenant-facing ASGI app: a route table, and the path of a forwarded request (validate, admit, relay).

A plain ASGI application (a dict of routes, no framework on the hot path). `create_app(config)` builds the
gateway and its two apps: this one (the OpenAI routes, `/health`, `/ready`, `/version`, and the Anthropic and
Ollama routes translated onto the OpenAI ones by api/translation.py) and the admin app.
Every answered request, whoever produced its answer, ends in exactly one access-log line and one count
(`GatewayMetrics.answered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from fleetgate import __version__
from fleetgate.admission.limits import apply_token_limits, cap_choices, priority
from fleetgate.api import anthropic, ollama
from fleetgate.api.admin import AdminApp
from fleetgate.api.anthropic import passthrough
from fleetgate.api.anthropic.usage import AnthropicUsage
from fleetgate.api.asgi import (
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    disconnected,
    error,
    read_body,
    reply,
)
from fleetgate.api.downstream import Downstream
from fleetgate.api.gateway import Gateway, Pool
from fleetgate.api.ollama.local import OLLAMA_VERSION, ps_body, show_body, tags_body
from fleetgate.api.stream_usage import wants_usage_upstream, with_usage_requested
from fleetgate.api.translation import OpenAIRequest, TranslatingSend, Translator, malformed
from fleetgate.config import FleetConfig
from fleetgate.protocol import (
    SSE_DONE,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    MethodNotAllowedError,
    NotFoundError,
    OpenAIError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    lax_bool,
    model_not_found,
)
from fleetgate.relay import Call, ClientStalled
from fleetgate.routing.prompt import PromptInfo
from fleetgate.routing.request import RouteRequest
from fleetgate.tenancy.cache import CACHE_HEADER, Recorder, replay

__all__ = ["AdminApp", "PublicApp", "create_app"]

log = logging.getLogger("fleetgate.gateway")

FORWARDED = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
    # vLLM's pooling-model routes, passed through and routed by model like embeddings.
    "/v1/rerank": "rerank",
    "/rerank": "rerank",
    "/v2/rerank": "rerank",
    "/score": "score",
    "/v1/score": "score",
    "/pooling": "pooling",
    "/classify": "classify",
}
# Routes of other APIs, translated at this edge onto the routes above (docs/gateway.md).
TRANSLATED: dict[str, Callable[[], Translator]] = {
    "/v1/messages": anthropic.MessagesTranslator,
    "/v1/messages/count_tokens": anthropic.CountTokensTranslator,
    "/api/chat": ollama.ChatTranslator,
    "/api/generate": ollama.GenerateTranslator,
    "/api/embed": ollama.EmbedTranslator,
    "/api/embeddings": lambda: ollama.EmbedTranslator(legacy=True),
}
# Translated routes a pool may pass through to upstreams that serve them (`anthropic: passthrough`).
PASSED_THROUGH = ("/v1/messages", "/v1/messages/count_tokens")
# Ollama routes answered here, whose errors take Ollama's shape.
OLLAMA_LOCAL = ("/api/version", "/api/tags", "/api/show", "/api/ps")
# Bodies larger than this are hashed for prefix routing in a worker thread, off the event loop.
OFFLOAD_HASHING_BYTES = 64 * 1024

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
            **{path: forward for path in TRANSLATED},
            "/api/version": {"GET": self._ollama_version},
            "/api/tags": {"GET": self._ollama_tags},
            "/api/show": {"POST": self._ollama_show},
            "/api/ps": {"GET": self._ollama_ps},
        }
        self.translators: dict[str, Callable[[], Translator]] = {
            **TRANSLATED,
            **dict.fromkeys(OLLAMA_LOCAL, ollama.ErrorsTranslator),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(self.gw, receive, send)
            return
        if kind != "http":
            return
        x = Exchange(scope, receive, send)
        try:
            methods = self.routes.get(x.path)
            if methods is None:
                raise NotFoundError(f"no route {x.path[:200]}")
            x.route = x.path
            make = self.translators.get(x.path)
            if make is not None:
                translator = make()
                x.translate(translator, TranslatingSend(send, translator))
            handler = methods.get(scope["method"])
            if handler is None:
                raise MethodNotAllowedError(scope["method"], allowed=methods)
            await handler(x)
        except OpenAIError as e:
            await error(x.send, e, x.request_id)
        except Exception:
            # A defect of ours: logged with its traceback; the client gets OpenAI's shape, not plain text.
            log.exception("request %s failed inside the gateway", x.request_id)
            if x.started:
                raise  # a stream under way can only be cut
            message = f"the gateway failed on this request (logged under request id {x.request_id})"
            await error(x.send, InternalServerError(message), x.request_id)
        finally:
            self.gw.metrics.answered(x)
            if x.model:
                await self.gw.finish(x)

    # ---- small routes ----------------------------------------------------------------------------------
    async def _health(self, x: Exchange) -> None:
        await reply(x.send, 200, b"", x.request_id)

    async def _version(self, x: Exchange) -> None:
        await reply(x.send, 200, orjson.dumps({"version": __version__}), x.request_id)

    async def _ready(self, x: Exchange) -> None:
        ready = self.gw.ready()
        await reply(x.send, 200 if ready else 503, orjson.dumps({"ready": ready}), x.request_id)

    def _served(self, routable_only: bool = False) -> dict[str, str]:
        """Every model name served (public name -> the name upstream), configured ones first."""
        seen: dict[str, str] = {}
        for public, pool in self.gw.model_pool.items():
            if not routable_only or any(e.routable() for e in pool.route.endpoints):
                seen[public] = pool.upstream_model[public]
        for pool in self.gw.discover_pools:
            for e in pool.route.endpoints:
                if not routable_only or e.routable():
                    for m in sorted(e.models):
                        seen.setdefault(m, m)
        return seen

    async def _models(self, x: Exchange) -> None:
        self._auth(x)
        now = int(time.time())
        data = [
            {"id": public, "object": "model", "created": now, "owned_by": "fleetgate", "root": root,
             "parent": None}
            for public, root in self._served().items()
        ]  # fmt: skip
        key = x.identity.key if x.identity is not None else None
        listed = [m for m in data if key is None or not key.models or m["id"] in key.models]
        body = {"object": "list", "data": listed}
        await reply(x.send, 200, orjson.dumps(body), x.request_id)

    # ---- the Ollama routes answered here (api/ollama/local.py) -----------------------------------------
    async def _ollama_version(self, x: Exchange) -> None:
        await reply(x.send, 200, orjson.dumps({"version": OLLAMA_VERSION}), x.request_id)

    async def _ollama_tags(self, x: Exchange) -> None:
        self._auth(x)
        await reply(x.send, 200, orjson.dumps(tags_body(self._served())), x.request_id)

    async def _ollama_ps(self, x: Exchange) -> None:
        self._auth(x)
        await reply(x.send, 200, orjson.dumps(ps_body(self._served(routable_only=True))), x.request_id)

    async def _ollama_show(self, x: Exchange) -> None:
        self._auth(x)
        try:
            raw = await read_body(x.receive, 1 << 16)
        except ClientGone:
            x.gone = True
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        name = body.get("model") or body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequestError("model is required", param="model")
        served = self._served()
        assert x.translator is not None
        found = next((n for n in x.translator.model_names(name) if n in served), None)
        if found is None:
            raise NotFoundError(f"model '{name[:200]}' not found")
        await reply(x.send, 200, orjson.dumps(show_body(name, served[found])), x.request_id)

    def _auth(self, x: Exchange) -> int:
        """The tenant's name goes on the exchange; returns its priority."""
        if sum(1 for name, _ in x.scope["headers"] if name == b"authorization") > 1:
            raise BadRequestError("send one Authorization header, not several", param="authorization")
        tenant = self.gw.keyring.tenant(x.headers)
        if tenant is None:
            self.gw.metrics.rejected.labels("auth").inc()
            raise AuthenticationError(
                "missing or invalid API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)"
            )
        x.tenant = tenant.name
        x.identity = tenant
        return tenant.priority

    # ---- forwarded requests ----------------------------------------------------------------------------
    async def _forward(self, x: Exchange) -> None:
        gw = self.gw
        rank = self._auth(x)
        if gw.closing:
            raise ServiceUnavailableError("the gateway is shutting down; retry on another replica")
        try:
            raw = await read_body(x.receive, gw.max_body_bytes)
        except ClientGone:
            x.gone = True
            return
        try:
            if len(raw) > OFFLOAD_HASHING_BYTES:
                # A large body's parsed tree is many times its size and lives while its prompt is hashed in
                # a thread: only a few at a time, the others wait as bytes.
                async with gw.large_bodies:
                    call, pool = await self._prepare(x, raw)
            else:
                call, pool = await self._prepare(x, raw)  # no await inside: the tree never waits
        except _Answered as local:
            await reply(x.send, 200, local.body, x.request_id)
            return
        del raw  # only the bytes going upstream stay for the request's life
        rank = priority(rank, x.headers, pool.config.priority_header)
        cache = gw.tenancy.responses
        if x.cache_key is not None and cache is not None:
            entry = await cache.get(x.cache_key)
            if entry is not None:
                x.cache = "HIT"  # no limits charged, no engine: the ledger records it as a hit
                await replay(x.send, entry, x.request_id)
                return
            x.cache = "MISS"
            call.extra_headers.append((CACHE_HEADER, b"MISS"))
        await self._charge(x, call, pool)
        x.call = call
        recorder = None
        send = x.send
        if x.cache == "MISS":
            recorder = Recorder(x.send, gw.config.tenancy.cache.max_entry_bytes)
            send = recorder.send
        turn = (x.tenant, x.prompt_bytes / 4 + x.max_output)  # its place among its priority's tenants
        serving = asyncio.ensure_future(self._serve(call, pool, rank, send, turn))
        watcher = asyncio.ensure_future(disconnected(x.receive))
        x.serving, x.handler = serving, asyncio.current_task()
        gw.exchanges.add(x)
        try:
            done, _ = await asyncio.wait({serving, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if serving not in done:
                # The client left: cancelling closes the upstream connection, so the engine aborts at once.
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError, OpenAIError, ClientStalled):
                    await serving
                x.gone = True
                return
            try:
                serving.result()
                if recorder is not None and recorder.entry is not None and call.status == 200:
                    assert cache is not None and x.cache_key is not None
                    await cache.put(x.cache_key, recorder.entry)
            except asyncio.CancelledError:
                if x.ended_by is None:
                    raise
                await self._end(x, x.ended_by)  # the drain's deadline passed
            except ClientStalled:
                x.gone = True
                x.abort()  # it stopped reading: free the socket, nothing can be said to it any more
        except asyncio.CancelledError:
            serving.cancel()
            raise
        finally:
            watcher.cancel()
            gw.exchanges.discard(x)

    async def _charge(self, x: Exchange, call: Call, pool: Pool) -> None:
        """The key's model and pool rules, then its and its tenant's limits and budgets (429 when spent)."""
        identity = x.identity
        if identity is None:
            return
        key = identity.key
        if key is not None and not key.allows(x.model, pool.config.name):
            raise PermissionDeniedError(f"this key may not use model '{x.model}'", param="model")
        x.ticket = await self.gw.tenancy.admit(identity, x.model, x.prompt_bytes, x.max_output)
        if x.ticket is not None:
            call.extra_headers += x.ticket.headers

    async def _end(self, x: Exchange, e: OpenAIError) -> None:
        """Finish an exchange the gateway ends itself: an SSE error event and `[DONE]` on a started stream,
        an error answer when nothing was sent yet."""
        if x.call is not None:
            x.call.status = e.status
        if not x.started:
            await error(x.send, e, x.request_id)
        elif not x.finished:
            await x.send({"type": "http.response.body", "body": e.to_sse() + SSE_DONE, "more_body": False})

    async def _serve(
        self, call: Call, pool: Pool, rank: int, send: Send, turn: tuple[str, float] = ("", 1.0)
    ) -> None:
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
            await self._admit(pool, rank, turn)
            admitted = True
            await gw.relay.forward(call, pool.route, downstream.send if downstream is not None else send)
        except OpenAIError as e:
            if downstream is None or not downstream.started:
                raise
            call.status = e.status
            await downstream.fail(e)
        finally:
            if downstream is not None:
                await downstream.release()
            if admitted:
                if pool.workers is not None:
                    pool.workers.last_active = time.monotonic()
                pool.flow.done()

    async def _admit(self, pool: Pool, rank: int, turn: tuple[str, float]) -> None:
        """Through the pool's flow queue; a request that finds no worker ready is held while one starts, as
        long as a cold start may take."""
        gw, name = self.gw, pool.config.name
        wp = pool.workers
        _raise_if_failed(pool)
        held = wp is not None and wp.cold()
        if held:
            gw.metrics.held.labels(name).inc()
        max_wait = wp.hold_timeout() if wp is not None and held else None
        try:
            waited = await pool.flow.admit(rank, max_wait, *turn)
        except OpenAIError as e:
            gw.metrics.shed.labels(name, "queue_timeout" if e.status == 503 else "saturated").inc()
            if wp is not None and held:
                _raise_if_failed(pool)
                if isinstance(e, RateLimitError):
                    # Nothing is wrong with the client's pace: the pool is starting and its queue is full.
                    raise ServiceUnavailableError(
                        f"pool '{name}' is starting a worker and its queue is full", retry_after=e.retry_after
                    ) from None
                if wp.cold():
                    raise wp.cold_start_error() from None
            raise
        if waited:
            gw.metrics.queue_wait.labels(name).observe(waited)
        if held:
            gw.metrics.hold_seconds.labels(name).observe(waited)
        _raise_if_failed(pool)  # it may have failed while the request was held

    async def _prepare(self, x: Exchange, raw: bytes) -> tuple[Call, Pool]:
        """Validate before any byte goes upstream, as leniently as vLLM does; rewrite the body only when
        something must change. The parsed tree lives only in this call: a 4 MiB body parses into tens of MB
        of objects, which must not stay for the whole request."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise BadRequestError(f"the body is not valid JSON: {e}", param="body") from None
        if not isinstance(body, dict):
            raise BadRequestError("the body must be a JSON object", param="body")
        t = x.translator
        passing = self._passes_through(x, body)
        if passing is not None:
            return await self._pass_through(x, raw, body, passing)
        translated: OpenAIRequest | None = None
        if t is not None:
            try:
                translated = t.request(body)
            except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
                raise malformed(e) from None
            body = translated.body
        path = x.path if translated is None else translated.path
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequestError("`model` is required and must be a string", param="model")
        names = (model,) if t is None else t.model_names(model)
        pool = None
        for name in names:
            pool = self.gw.pool_for(name)
            if pool is not None:
                model = name
                break
        if pool is None:
            self.gw.metrics.rejected.labels("unknown_model").inc()
            raise model_not_found(model)
        x.model, x.pool = model, pool.config.name
        if translated is not None and translated.local is not None:
            raise _Answered(translated.local)
        stream = lax_bool(body.get("stream"), "stream") if translated is None else translated.stream
        kind = FORWARDED[path]
        changed = translated is not None
        upstream = pool.upstream_model.get(model, model)
        if upstream != body["model"]:
            body["model"] = upstream
            changed = True
        if kind in ("chat", "completions"):
            changed |= apply_token_limits(body, pool.limits)
            cap_choices(body, pool.limits)
        elif kind == "responses":
            changed |= apply_token_limits(body, pool.limits, key="max_output_tokens")
        x.prompt_bytes = len(raw)
        x.max_output = _max_output(body, kind)
        if kind in ("chat", "completions"):
            x.cache_key = self.gw.tenancy.cache_key(x.path, body, x.tenant, x.headers.get(CACHE_HEADER))
        # A translated stream asked for usage itself: its translator reads the usage event.
        strip_usage = (
            translated is None and stream and kind in ("chat", "completions") and wants_usage_upstream(body)
        )
        if changed:
            if strip_usage:
                body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            data = orjson.dumps(body)
        else:
            data = with_usage_requested(raw, body) if strip_usage else raw
        adapter = upstream if _is_adapter(pool, upstream) else None
        route = RouteRequest(model=upstream, adapter=adapter)
        call = Call(path=path, body=data, stream=stream, route=route, request_id=x.request_id,
                    pool=pool.config.name, model=model, strip_usage=strip_usage)  # fmt: skip
        if pool.wants_prompt:
            await _fingerprint(call, pool, kind, body, x.headers, len(raw))
        return call, pool

    def _passes_through(self, x: Exchange, body: dict[str, Any]) -> Pool | None:
        """The pool of a request to pass through: an Anthropic route whose model's pool says so."""
        if x.path not in PASSED_THROUGH:
            return None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return None  # the translator's 400
        pool = self.gw.pool_for(model)
        return pool if pool is not None and pool.config.anthropic == "passthrough" else None

    async def _pass_through(
        self, x: Exchange, raw: bytes, body: dict[str, Any], pool: Pool
    ) -> tuple[Call, Pool]:
        """The Call of a passed-through Messages request (api/anthropic/passthrough.py): the client's bytes,
        unless an alias must become the served name."""
        x.pass_through(passthrough.PassthroughSend(x.client_send))
        model: str = body["model"]
        x.model, x.pool = model, pool.config.name
        counting = x.path == "/v1/messages/count_tokens"
        stream, x.max_output = passthrough.check(body, pool.limits, counting)
        x.prompt_bytes = len(raw)
        upstream = pool.upstream_model.get(model, model)
        data = raw
        if upstream != model:
            body["model"] = upstream
            data = orjson.dumps(body)
        adapter = upstream if _is_adapter(pool, upstream) else None
        route = RouteRequest(model=upstream, adapter=adapter)
        call = Call(path=x.path, body=data, stream=stream, route=route, request_id=x.request_id,
                    pool=pool.config.name, model=model, usage_shape=AnthropicUsage())  # fmt: skip
        view = passthrough.chat_view(body) if pool.wants_prompt and not counting else None
        if view is not None:
            await _fingerprint(call, pool, "chat", view, x.headers, len(raw))
        return call, pool


class _Answered(Exception):
    """A translated request the translator answers itself (Ollama's "load the model" request)."""

    def __init__(self, body: bytes) -> None:
        super().__init__("answered locally")
        self.body = body


def _max_output(body: dict[str, Any], kind: str) -> int:
    """Output tokens the request may produce (after the pool's default was applied): max_tokens x n."""
    if kind in ("chat", "completions"):
        given = body.get("max_completion_tokens") or body.get("max_tokens")
    elif kind == "responses":
        given = body.get("max_output_tokens")
    else:
        return 0
    n = body.get("n")
    try:
        return int(given or 0) * max(1, int(n) if n is not None else 1)
    except (TypeError, ValueError):
        return 0


def _raise_if_failed(pool: Pool) -> None:
    """A pool whose workers failed too often, or cannot start one (a pod stuck Pending), answers why, at
    once."""
    problem = pool.workers.problem() if pool.workers is not None else None
    if problem is not None:
        raise ServiceUnavailableError(problem)


def _is_adapter(pool: Pool, model: str) -> bool:
    return any(a.name == model for a in pool.config.adapters) or any(
        model in e.adapters for e in pool.route.endpoints
    )


async def _fingerprint(
    call: Call, pool: Pool, kind: str, body: dict[str, Any], headers: Mapping[bytes, bytes], size: int
) -> None:
    """Fill in the prompt's block keys and the session for the prefix and session scorers."""
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
