"""One simulated vLLM server: vLLM 0.26's HTTP API in front of the simulated engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fleetgate.protocol import BadRequestError, OpenAIError
from fleetgate.sim.chat import ChatRoutes
from fleetgate.sim.completions import CompletionRoutes
from fleetgate.sim.control import Control
from fleetgate.sim.embeddings import EmbeddingRoutes
from fleetgate.sim.responses import ResponsesRoutes
from fleetgate.tokenizer import render_chat
from fleetgate.worker import render
from fleetgate.worker.replies import reply_error, reply_json, until_disconnect
from fleetgate.worker.requests import TokenizeRequest, validate

VERSION = "0.26.0"
_NOT_FOUND = {"detail": "Not Found"}


class SimServer(ChatRoutes, CompletionRoutes, ResponsesRoutes, EmbeddingRoutes):
    """vLLM's routes: the plain ones here, the API surfaces from their modules, the control routes."""

    def app(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/load", self.load, methods=["GET"]),
            Route("/ping", self.ping, methods=["GET", "POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
        ]
        if self.profile.task == "generate":
            routes += [
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
            ]
        else:
            routes.append(Route("/v1/embeddings", self.embeddings, methods=["POST"]))
        routes += Control(self).routes()

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            self.engine.start()
            try:
                yield
            finally:
                await self.engine.stop()
                if self.publisher is not None:
                    self.publisher.close()

        return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: self._not_found})

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return JSONResponse(_NOT_FOUND, status_code=404)

    async def health(self, request: Request) -> Response:
        if self.faults.health == "hang":
            await until_disconnect(request)
        if self.faults.health == "fail":
            return Response(status_code=503)
        return Response(status_code=200)

    async def version(self, request: Request) -> Response:
        return reply_json({"version": VERSION})

    async def load(self, request: Request) -> Response:
        return reply_json({"server_load": self.in_flight})

    async def ping(self, request: Request) -> Response:
        return Response(status_code=200)

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.stats.render(self.engine), media_type="text/plain; version=0.0.4")

    def _model_entry(self, name: str, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
        return render.model_card(name, root, parent, max_len, self.created)

    async def models(self, request: Request) -> Response:
        data = [
            self._model_entry(n, self.s.model_path, None, self.s.engine.max_model_len)
            for n in self.s.served_model_names
        ]
        data += [self._model_entry(n, p, self.model_name, None) for n, p in self.loras.items()]
        return reply_json({"object": "list", "data": data})

    async def tokenize(self, request: Request) -> Response:
        try:
            req = validate(TokenizeRequest, await self._body(request))
            self._check_model(req.model)
            if req.messages is not None:
                messages = [m.model_dump(exclude_none=True) for m in req.messages]
                tools = [t.model_dump(exclude_none=True) for t in req.tools or ()]
                ids = render_chat(self.tokenizer, messages, tools or None, req.add_generation_prompt)
            else:
                ids = list(self.tokenizer.encode(req.prompt or ""))
        except OpenAIError as e:
            return reply_error(e)
        body = {
            "count": len(ids),
            "max_model_len": self.s.engine.max_model_len,
            "tokens": ids,
            "token_strs": None,
        }
        return reply_json(body)

    async def detokenize(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            tokens = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                raise BadRequestError("tokens must be a list of token ids", param="tokens")
        except OpenAIError as e:
            return reply_error(e)
        return reply_json({"prompt": self.tokenizer.decode(tokens)})
