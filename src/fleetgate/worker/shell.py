"""The HTTP shell every vLLM-compatible worker shares: the app with vLLM's 404 body, and the routes that
answer alike whatever generates the tokens (/metrics, /v1/models, /tokenize, /detokenize).

The simulator and the embedded engine each say what their model is (a `Served`); health, version and the
generation routes stay theirs, because those differ (faults, a dead engine thread, the version reported).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fleetgate.protocol import BadRequestError, OpenAIError
from fleetgate.worker.replies import reply_error, reply_json
from fleetgate.worker.requests import ChatMessage, TokenizeRequest, parse_json, validate


class Tokens(Protocol):
    """The served model's tokenizer, as /tokenize and /detokenize use it."""

    def encode(self, text: str, add_special_tokens: bool) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def chat(
        self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
    ) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class Served:
    """What the shared routes read from a worker."""

    max_model_len: int
    tokens: Tokens
    # Raises the OpenAI 404 for a model this worker does not serve (a worker with adapters accepts them too).
    check_model: Callable[[str | None], object]
    # vLLM's /v1/models cards, base models first.
    model_cards: Callable[[], list[dict[str, Any]]]
    # The Prometheus text of /metrics.
    metrics_page: Callable[[], str]


class Shell:
    def __init__(self, served: Served) -> None:
        self.served = served

    def routes(self) -> list[Route]:
        return [
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
        ]

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.served.metrics_page(), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> Response:
        return reply_json({"object": "list", "data": self.served.model_cards()})

    async def tokenize(self, request: Request) -> Response:
        s = self.served
        try:
            req = validate(TokenizeRequest, parse_json(await request.body()))
            s.check_model(req.model)
            if req.messages is not None:
                tools = [t.model_dump(exclude_none=True) for t in req.tools or ()]
                ids = s.tokens.chat(req.messages, tools or None, req.add_generation_prompt)
            else:
                ids = s.tokens.encode(req.prompt or "", req.add_special_tokens)
        except OpenAIError as e:
            return reply_error(e)
        return reply_json(
            {"count": len(ids), "max_model_len": s.max_model_len, "tokens": ids, "token_strs": None}
        )

    async def detokenize(self, request: Request) -> Response:
        try:
            body = parse_json(await request.body())
            tokens = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                raise BadRequestError("tokens must be a list of token ids", param="tokens")
        except OpenAIError as e:
            return reply_error(e)
        return reply_json({"prompt": self.served.tokens.decode(tokens)})


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": "Not Found"}, status_code=404)


def worker_app(
    routes: list[Route], lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]]
) -> Starlette:
    """The Starlette app of a worker: its routes, its lifespan and vLLM's 404 body for unknown paths."""
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: _not_found})
