"""/v1/embeddings for an embedding profile: bag-of-tokens vectors, vLLM's length errors."""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fleetgate.protocol import BadRequestError, OpenAIError, random_id
from fleetgate.sim.core import SimCore
from fleetgate.worker.replies import reply_error, reply_json
from fleetgate.worker.requests import EmbeddingRequest, validate


class EmbeddingRoutes(SimCore):
    async def embeddings(self, request: Request) -> Response:
        received = asyncio.get_running_loop().time()
        try:
            req = validate(EmbeddingRequest, await self._body(request))
            self._check_model(req.model)
            if req.dimensions is not None:
                # vLLM's check for a model without matryoshka dimensions (as the profiled MiniLM is).
                raise BadRequestError(
                    f'Model "{self.model_name}" does not support matryoshka representation, changing output '
                    "dimensions will lead to poor results.",
                    param="dimensions",
                )
            prompts = self._prompts(req.input)
            for p in prompts:
                if len(p) > self.s.engine.max_model_len:
                    raise BadRequestError(
                        f"This model's maximum context length is {self.s.engine.max_model_len} tokens. "
                        f"However, you requested {len(p)} tokens in the input for embedding generation. "
                        "Please reduce the length of the input.",
                        param="input_tokens",
                    )
            reqs = [self._new_request(p, 1, 0, True, None, 1, None) for p in prompts]
            if not await self._admit(request, reqs, received):
                return Response(status_code=499)
        except OpenAIError as e:
            return reply_error(e)
        dim = self.profile.embedding_dim
        model = req.model or self.model_name

        async def make() -> Response:
            await self._wait_all(reqs)
            data = [
                {"index": i, "object": "embedding", "embedding": _embed(p, dim)}
                for i, p in enumerate(prompts)
            ]
            total = sum(len(p) for p in prompts)
            usage: dict[str, Any] = {"prompt_tokens": total, "total_tokens": total, "completion_tokens": 0}
            usage["prompt_tokens_details"] = None
            body = {"id": random_id("embd-"), "object": "list", "created": int(time.time()), "model": model}
            return reply_json({**body, "data": data, "usage": usage})

        return await self._run(request, reqs, make)


def _embed(tokens: Sequence[int], dim: int) -> list[float]:
    """A normalised bag-of-tokens projection: texts sharing tokens get close vectors, as real ones do."""
    vec = [0.0] * dim
    for t in tokens:
        h = zlib.crc32(t.to_bytes(4, "little"))
        vec[h % dim] += 1.0 if (h >> 16) & 1 else -1.0
        vec[(h >> 8) % dim] += 0.5
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
