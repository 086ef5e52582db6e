"""vLLM's pooling-model routes on the simulator: rerank (`/rerank`, `/v1/rerank`, `/v2/rerank`), score
(`/score`, `/v1/score`), `/pooling` and `/classify`, served by an embedding profile.

Scores are the overlap of the two texts' tokens (texts sharing words score higher, as a cross-encoder's
would); every text is one request through the engine, so load, queueing and metrics behave as for embeddings.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetgate.protocol import BadRequestError, OpenAIError, random_id
from fleetgate.sim.core import SimCore
from fleetgate.worker.replies import reply_error, reply_json
from fleetgate.worker.requests import Body, parse_json, validate

if TYPE_CHECKING:
    from fleetgate.sim.engine import EngineRequest


class RerankRequest(Body):
    model: str | None = None
    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = None
    return_documents: bool = True


class ScoreRequest(Body):
    model: str | None = None
    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None

    @model_validator(mode="after")
    def _both(self) -> ScoreRequest:
        # Newer clients send queries/documents: the same pairs under other names.
        extra = self.model_extra or {}
        if self.text_1 is None:
            self.text_1 = extra.get("queries")
        if self.text_2 is None:
            self.text_2 = extra.get("documents")
        if self.text_1 is None or self.text_2 is None:
            raise ValueError("text_1 and text_2 are required")
        return self


class PoolingInput(Body):
    model: str | None = None
    input: str | list[str]


def overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Cosine similarity of two token sets, in [0, 1]."""
    sa, sb = set(a), set(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / math.sqrt(len(sa) * len(sb))


class Pooling:
    def __init__(self, srv: SimCore) -> None:
        self.srv = srv

    def routes(self) -> list[Route]:
        return [
            *(Route(p, self.rerank, methods=["POST"]) for p in ("/rerank", "/v1/rerank", "/v2/rerank")),
            *(Route(p, self.score, methods=["POST"]) for p in ("/score", "/v1/score")),
            Route("/pooling", self.pooling, methods=["POST"]),
            Route("/classify", self.classify, methods=["POST"]),
        ]

    async def _serve(self, request: Request, texts: list[str]) -> tuple[list[list[int]], Response | None]:
        """The texts' tokens, once the engine has processed each as a request (None: serve on), or the
        answer to give instead (a fault, a client that left)."""
        srv = self.srv
        received = asyncio.get_running_loop().time()
        prompts = [list(srv.tokenizer.encode(t)) or [0] for t in texts]
        for p in prompts:
            if len(p) > srv.s.engine.max_model_len:
                raise BadRequestError(
                    f"This model's maximum context length is {srv.s.engine.max_model_len} tokens. "
                    f"However, you requested {len(p)} tokens in the input.",
                    param="input_tokens",
                )
        reqs: list[EngineRequest] = [srv._new_request(p, 1, 0, True, None, 1, None) for p in prompts]
        if not await srv._admit(request, reqs, received):
            return prompts, Response(status_code=499)

        async def make() -> Response:
            await srv._wait_all(reqs)
            return Response(status_code=200)

        done = await srv._run(request, reqs, make)
        return prompts, None if done.status_code == 200 else done

    def _model(self, given: str | None) -> str:
        self.srv._check_model(given)
        return given or self.srv.model_name

    async def rerank(self, request: Request) -> Response:
        try:
            req = validate(RerankRequest, parse_json(await request.body()))
            model = self._model(req.model)
            docs = [d if isinstance(d, str) else str(d.get("text", "")) for d in req.documents]
            prompts, early = await self._serve(request, [req.query, *docs])
        except OpenAIError as e:
            return reply_error(e)
        if early is not None:
            return early
        scored = sorted(
            ((i, overlap(prompts[0], p)) for i, p in enumerate(prompts[1:])), key=lambda s: s[1], reverse=True
        )
        if req.top_n is not None and req.top_n > 0:
            scored = scored[: req.top_n]
        results = [
            {
                "index": i,
                "document": {"text": docs[i]} if req.return_documents else None,
                "relevance_score": s,
            }
            for i, s in scored
        ]
        usage = {"total_tokens": sum(len(p) for p in prompts)}
        return reply_json({"id": random_id("rerank-"), "model": model, "usage": usage, "results": results})

    async def score(self, request: Request) -> Response:
        try:
            req = validate(ScoreRequest, parse_json(await request.body()))
            model = self._model(req.model)
            left = [req.text_1] if isinstance(req.text_1, str) else list(req.text_1 or [])
            right = [req.text_2] if isinstance(req.text_2, str) else list(req.text_2 or [])
            if len(left) == 1:
                left = left * len(right)
            if len(left) != len(right) or not right:
                raise BadRequestError("text_1 and text_2 must pair up: one to many, or as many as each other")
            prompts, early = await self._serve(request, [*left, *right])
        except OpenAIError as e:
            return reply_error(e)
        if early is not None:
            return early
        n = len(left)
        data = [
            {"index": i, "object": "score", "score": overlap(prompts[i], prompts[n + i])} for i in range(n)
        ]
        return reply_json(self._listing("score-", model, data, prompts))

    async def pooling(self, request: Request) -> Response:
        return await self._per_input(request, "pool-", self._pooled)

    async def classify(self, request: Request) -> Response:
        return await self._per_input(request, "classify-", self._classified)

    async def _per_input(self, request: Request, prefix: str, entry: Any) -> Response:
        try:
            req = validate(PoolingInput, parse_json(await request.body()))
            model = self._model(req.model)
            texts = [req.input] if isinstance(req.input, str) else req.input
            if not texts:
                raise BadRequestError("input cannot be empty", param="input")
            prompts, early = await self._serve(request, texts)
        except OpenAIError as e:
            return reply_error(e)
        if early is not None:
            return early
        data = [entry(i, p) for i, p in enumerate(prompts)]
        return reply_json(self._listing(prefix, model, data, prompts))

    def _pooled(self, i: int, tokens: list[int]) -> dict[str, Any]:
        dim = self.srv.profile.embedding_dim or 8
        vec = [0.0] * dim
        for t in tokens:
            vec[zlib.crc32(t.to_bytes(4, "little")) % dim] += 1.0
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return {"index": i, "object": "pooling", "data": [v / norm for v in vec]}

    def _classified(self, i: int, tokens: list[int]) -> dict[str, Any]:
        p = (zlib.crc32(bytes(str(tokens), "ascii")) % 1000) / 1000
        probs = [1 - p, p]
        return {"index": i, "label": "LABEL_1" if p > 0.5 else "LABEL_0", "probs": probs, "num_classes": 2}

    @staticmethod
    def _listing(
        prefix: str, model: str, data: list[dict[str, Any]], prompts: list[list[int]]
    ) -> dict[str, Any]:
        total = sum(len(p) for p in prompts)
        usage = {
            "prompt_tokens": total,
            "total_tokens": total,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        }
        return {"id": random_id(prefix), "object": "list", "created": int(time.time()), "model": model,
                "data": data, "usage": usage}  # fmt: skip
