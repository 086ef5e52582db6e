"""/v1/completions on the simulated engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from fleetgate.protocol import BadRequestError, OpenAIError, Usage, random_id
from fleetgate.sim.choices import Choice, Crash, merge, sampling_seed
from fleetgate.sim.core import SimCore
from fleetgate.tokenizer import IM_END
from fleetgate.worker import render
from fleetgate.worker.replies import reply_error, reply_json
from fleetgate.worker.requests import CompletionRequest, check_sampling, resolve_max_tokens, validate


class CompletionRoutes(SimCore):
    async def completions(self, request: Request) -> Response:
        received = asyncio.get_running_loop().time()
        try:
            req = validate(CompletionRequest, await self._body(request))
            lora = self._check_model(req.model)
            check_sampling(req)
            prompts = self._prompts(req.prompt)
            for p in prompts:
                if not p:
                    raise BadRequestError("Prompt cannot be empty", param="prompt")
            stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
            choices: list[Choice] = []
            for pi, p in enumerate(prompts):
                max_tokens = resolve_max_tokens(req.max_tokens or 16, len(p), self.s.engine.max_model_len)
                for i in range(req.n):
                    seed = sampling_seed(req.seed, i, req.temperature, p, lora)
                    er = self._new_request(p, max_tokens, seed, req.ignore_eos, lora, req.n, None)
                    choices.append(Choice(pi * req.n + i, er, stops, self.tokenizer.token_text))
            reqs = [c.req for c in choices]
            if not await self._admit(request, reqs, received):
                return Response(status_code=499)
        except OpenAIError as e:
            return reply_error(e)
        model = req.model or self.model_name
        rid = random_id("cmpl-")
        created = int(time.time())
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            gen = self._completion_stream(
                choices, prompt_tokens, rid, created, model, include_usage, req.logprobs
            )
            return self._streaming(gen, reqs)

        async def make() -> Response:
            await self._wait_all(reqs)
            out = []
            for c in choices:
                text = c.final_text(self._text_of(c.req.output))
                reason, stop_reason = self._finish_of(c)
                lp = None
                if req.logprobs is not None:
                    texts = [self.tokenizer.token_text(t) for t in c.req.output if t != IM_END]
                    lp = render.completion_logprobs(texts, c.req.rng, 0, req.logprobs)
                out.append(render.completion_choice(c.index, text, lp, reason, stop_reason))
            completion = sum(len(c.req.output) for c in choices)
            return reply_json(
                render.completion_body(rid, created, model, out, Usage(prompt_tokens, completion))
            )

        return await self._run(request, reqs, make)

    async def _completion_stream(
        self,
        choices: list[Choice],
        prompt_tokens: int,
        rid: str,
        created: int,
        model: str,
        include_usage: bool,
        logprobs: int | None,
    ) -> AsyncIterator[bytes]:
        enc = render.CompletionChunks(rid, created, model)
        crash = self._crash_point()
        sent = 0
        offsets = [0] * len(choices)
        async for c, tokens, finish in merge(choices):
            out: list[bytes] = []
            last = len(tokens) - 1
            for k, tok in enumerate(tokens):
                ending = finish if k == last else None
                text = "" if tok == IM_END else self.tokenizer.token_text(tok)
                if ending is not None and c.stop_hit is not None:
                    text = c.hit_piece
                lp = None
                if logprobs is not None:
                    lp = render.completion_logprobs([text], c.req.rng, offsets[c.index], logprobs)
                    offsets[c.index] += len(text)
                if ending is not None:
                    out.append(enc.finish(c.index, text, ending, c.stop_hit, not include_usage, lp))
                else:
                    out.append(enc.text(c.index, text, lp))
            if out:
                yield b"".join(out)
            sent += len(tokens)
            if crash is not None and sent >= crash:
                raise Crash
        if include_usage:
            completion = sum(len(c.req.output) for c in choices)
            yield enc.usage(Usage(prompt_tokens, completion))
        yield render.DONE
