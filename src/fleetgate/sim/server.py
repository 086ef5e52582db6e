"""One simulated vLLM server: vLLM 0.26's HTTP API in front of the simulated engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetgate.sim.completions import CompletionRoutes
from fleetgate.sim.control import Control
from fleetgate.sim.embeddings import EmbeddingRoutes
from fleetgate.sim.messages import MessagesRoutes
from fleetgate.sim.pooling import Pooling
from fleetgate.sim.responses import ResponsesRoutes
from fleetgate.tokenizer import Tokenizer, render_chat
from fleetgate.worker import render
from fleetgate.worker.replies import reply_json, until_disconnect
from fleetgate.worker.requests import ChatMessage
from fleetgate.worker.shell import Served, Shell, worker_app

VERSION = "0.26.0"


class SimServer(MessagesRoutes, CompletionRoutes, ResponsesRoutes, EmbeddingRoutes):
    """vLLM's routes: the plain ones here, the API surfaces from their modules, the control routes."""

    def app(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/load", self.load, methods=["GET"]),
            Route("/ping", self.ping, methods=["GET", "POST"]),
            *self.shell().routes(),
        ]
        if self.profile.task == "generate":
            routes += [
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            ]
        else:
            routes.append(Route("/v1/embeddings", self.embeddings, methods=["POST"]))
            routes += Pooling(self).routes()
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

        return worker_app(routes, lifespan)

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

    def _model_entry(self, name: str, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
        return render.model_card(name, root, parent, max_len, self.created)

    def model_cards(self) -> list[dict[str, Any]]:
        data = [
            self._model_entry(n, self.s.model_path, None, self.s.engine.max_model_len)
            for n in self.s.served_model_names
        ]
        return data + [self._model_entry(n, p, self.model_name, None) for n, p in self.loras.items()]

    def shell(self) -> Shell:
        return Shell(
            Served(
                self.s.engine.max_model_len,
                _SimTokens(self.tokenizer),
                self._check_model,
                self.model_cards,
                lambda: self.stats.render(self.engine),
            )
        )


class _SimTokens:
    """The simulator's tokenizer as the shell's `Tokens` (it has no special tokens to add)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def chat(
        self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
    ) -> list[int]:
        dicts = [m.model_dump(exclude_none=True) for m in messages]
        return render_chat(self.tokenizer, dicts, tools, add_generation_prompt)
