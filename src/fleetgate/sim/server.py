"""One simulated vLLM server: vLLM 0.26's HTTP API in front of the simulated engine."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from fleetgate.protocol import (
    BadRequestError,
    OpenAIError,
    Usage,
    model_not_found,
    random_id,
)
from fleetgate.sim.control import Control
from fleetgate.sim.engine import Engine, EngineRequest
from fleetgate.sim.faults import fault_error
from fleetgate.sim.kv_publisher import KVEventPublisher
from fleetgate.sim.scripts import Script, ToolStream, json_script, pick_tool, tool_script
from fleetgate.sim.settings import SimSettings
from fleetgate.tokenizer import IM_END, TextSampler, Tokenizer, render_chat
from fleetgate.worker import render
from fleetgate.worker.metrics import EngineStats
from fleetgate.worker.replies import reply_error, reply_json, unless_gone, until_disconnect
from fleetgate.worker.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    NamedToolChoice,
    ResponsesRequest,
    TokenizeRequest,
    check_sampling,
    parse_json,
    resolve_max_tokens,
    validate,
)

VERSION = "0.26.0"
# Mean length of an answer that ends on its own (no ignore_eos): chat answers run a few hundred tokens.
NATURAL_OUTPUT_MEDIAN = 160
_NOT_FOUND = {"detail": "Not Found"}


class _Crash(Exception):
    """A fault that kills the process mid-stream, as a dying vLLM would."""


@dataclass(slots=True)
class _Choice:
    """Per-choice decoding state: stop strings and how its tokens become deltas."""

    index: int
    req: EngineRequest
    stops: tuple[str, ...]
    token_text: Callable[[int], str]
    tool: ToolStream | None = None
    tail: str = ""
    stop_hit: str | None = None
    hit_piece: str = ""  # the text of the stopping token that precedes the stop string

    def __post_init__(self) -> None:
        if self.stops:
            self.req.stop = self.watch

    def watch(self, token: int) -> bool:
        """Called by the engine for every generated token: True once a stop string is complete, so
        generation (and billing) ends at that token, as vLLM's output processor ends it."""
        text = "" if token == IM_END else self.token_text(token)
        window = self.tail + text
        for s in self.stops:
            at = window.find(s)
            if at >= 0:
                self.stop_hit = s
                self.hit_piece = window[len(self.tail) : at] if at >= len(self.tail) else ""
                return True
        keep = max(len(s) for s in self.stops) - 1
        self.tail = window[-keep:] if keep else ""
        return False

    def final_text(self, text: str) -> str:
        return text[: text.find(self.stop_hit)] if self.stop_hit is not None else text


class SimServer:
    def __init__(self, settings: SimSettings) -> None:
        self.s = settings
        self.profile = settings.profile
        self.tokenizer = Tokenizer()
        self.sampler = TextSampler(self.tokenizer)
        self.model_name = settings.served_model_names[0]
        args = settings.engine
        cache_info = {
            "_block_size_resolved": "True",
            "block_size": str(args.block_size),
            "cache_dtype": "auto",
            "calculate_kv_scales": "False",
            "enable_prefix_caching": str(args.enable_prefix_caching),
            "gpu_memory_utilization": "0.92",
            "is_attention_free": "False",
            "kv_cache_dtype_skip_layers": "[]",
            "kv_cache_max_concurrency": str(args.num_gpu_blocks * args.block_size / args.max_model_len),
            "kv_cache_memory_bytes": "None",
            "kv_cache_size_tokens": str(args.num_gpu_blocks * args.block_size),
            "kv_offloading_backend": "native",
            "kv_offloading_size": "None",
            "kv_sharing_fast_prefill": "False",
            "mamba_block_size": "None",
            "mamba_cache_dtype": "auto",
            "mamba_cache_mode": "none",
            "mamba_page_size_padded": "None",
            "mamba_ssm_cache_dtype": "auto",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(args.num_gpu_blocks),
            "num_gpu_blocks_override": str(args.num_gpu_blocks)
            if args.num_gpu_blocks != self.profile.kv.num_gpu_blocks
            else "None",
            "prefix_caching_hash_algo": "sha256",
            "prefix_match_unit": "None",
            "skip_page_size_padded": "None",
            "sliding_window": "None",
            "user_specified_block_size": "False",
            "user_specified_mamba_block_size": "False",
        }
        self.stats = EngineStats(
            self.model_name,
            cache_info,
            args.max_loras if args.enable_lora else None,
            tool_parser=settings.tool_call_parser is not None,
        )
        self.publisher: KVEventPublisher | None = None
        kv = settings.kv_events
        if kv is not None and kv.enable_kv_cache_events and kv.publisher == "zmq":
            self.publisher = KVEventPublisher(kv.endpoint, kv.topic)
        self.engine = Engine(
            self.profile,
            args,
            self.sampler,
            self.stats,
            self.publisher.publish if self.publisher else None,
        )
        self.loras: dict[str, str] = dict(settings.lora_modules)
        self.created = int(time.time())
        self.rng = random.Random(settings.seed)
        self.faults = settings.faults
        self.in_flight = 0
        self._scale = args.time_scale

    # ---- app -------------------------------------------------------------------------------------------
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

    # ---- plain endpoints -------------------------------------------------------------------------------
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

    def _check_model(self, model: str | None) -> str | None:
        """The LoRA adapter a request names (None for the base model); 404 for anything unknown."""
        if model is None or model in self.s.served_model_names:
            return None
        if model in self.loras:
            return model
        raise model_not_found(model)

    async def _body(self, request: Request) -> Any:
        return parse_json(await request.body())

    # ---- tokenize --------------------------------------------------------------------------------------
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

    # ---- generation core -------------------------------------------------------------------------------
    def _new_request(
        self,
        prompt: list[int],
        max_tokens: int,
        seed: int | None,
        ignore_eos: bool,
        lora: str | None,
        n: int,
        script: Script | None,
    ) -> EngineRequest:
        rng = random.Random(seed if seed is not None else self.rng.getrandbits(64))
        if ignore_eos:
            eos_after = None
        elif script is not None:
            eos_after = len(script.tokens)
        else:
            eos_after = max(1, round(rng.lognormvariate(math.log(NATURAL_OUTPUT_MEDIAN), 0.8)))
        return EngineRequest(
            rid=random_id(""),
            prompt=prompt,
            max_tokens=max_tokens,
            rng=rng,
            eos_after=eos_after,
            script=script.tokens if script else (),
            lora=lora,
            params_n=n,
        )

    async def _admit(self, request: Request, reqs: Sequence[EngineRequest], received: float) -> bool:
        """Apply injected faults and the per-request overhead, then hand the requests to the engine.

        A request arrives when its handler started (`received`), before parsing and tokenization, as the
        client sees it: the simulator's TTFT histogram and a client's TTFT measure the same interval.
        """
        for r in reqs:
            r.arrival = received
        f = self.faults
        if f.first_byte_delay:
            await asyncio.sleep(f.first_byte_delay)
        status = f.pick_error(self.rng)
        if status is not None:
            raise fault_error(status)
        if f.hang_rate and self.rng.random() < f.hang_rate:
            await until_disconnect(request)
            return False
        if self.profile.step.overhead:
            await asyncio.sleep(self.profile.step.overhead / self._scale)
        for r in reqs:
            self.engine.add(r)
        return True

    def _crash_point(self) -> int | None:
        f = self.faults
        if f.crash_rate and self.rng.random() < f.crash_rate:
            return f.crash_after_tokens
        return None

    async def _run(
        self, request: Request, reqs: list[EngineRequest], make: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Serve a non-streamed answer, aborting the engine work if the client leaves first."""
        self.in_flight += 1
        try:
            return await unless_gone(request, make())
        finally:
            for r in reqs:
                self.engine.abort(r)
            self.in_flight -= 1

    async def _wait_all(self, reqs: Sequence[EngineRequest]) -> None:
        for r in reqs:
            while r.finish_reason is None:
                await r.next_tokens()

    def _text_of(self, tokens: Sequence[int]) -> str:
        tt = self.tokenizer.token_text
        return "".join(tt(t) for t in tokens if t != IM_END)

    def _finish_of(self, choice: _Choice) -> tuple[str, str | None]:
        if choice.stop_hit is not None:
            return "stop", choice.stop_hit
        return choice.req.finish_reason or "stop", None

    # ---- chat ------------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        received = asyncio.get_running_loop().time()
        try:
            req = validate(ChatCompletionRequest, await self._body(request))
            lora = self._check_model(req.model)
            check_sampling(req)
            self._check_tools(req)
            messages = [m.model_dump(exclude_none=True) for m in req.messages]
            tools = [t.model_dump(exclude_none=True) for t in req.tools or ()]
            prompt = render_chat(self.tokenizer, messages, tools or None)
            choice = req.tool_choice
            named = choice.function.name if isinstance(choice, NamedToolChoice) else None
            mode = choice if isinstance(choice, str) else None
            last_role = messages[-1]["role"] if messages else None
            requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
            max_tokens = resolve_max_tokens(requested, len(prompt), self.s.engine.max_model_len)
            reqs: list[EngineRequest] = []
            choices: list[_Choice] = []
            stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
            for i in range(req.n):
                seed = None if req.seed is None else req.seed + i
                rng = random.Random(seed if seed is not None else self.rng.getrandbits(64))
                script: Script | None = None
                tool = pick_tool(tools, mode, named, last_role)
                if tool is not None:
                    script = tool_script(self.tokenizer, tool, rng)
                elif req.response_format:
                    script = json_script(self.tokenizer, req.response_format, rng)
                er = self._new_request(prompt, max_tokens, seed, req.ignore_eos, lora, req.n, script)
                reqs.append(er)
                stream = ToolStream(script, self.tokenizer) if script and script.tool_name else None
                choices.append(_Choice(i, er, stops, self.tokenizer.token_text, stream))
            if not await self._admit(request, reqs, received):
                return Response(status_code=499)
        except OpenAIError as e:
            return reply_error(e)
        model = req.model or self.model_name
        rid = random_id("chatcmpl-")
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            top = (req.top_logprobs or 0) if req.logprobs else -1
            gen = self._chat_stream(choices, len(prompt), rid, created, model, include_usage, top)
            return self._streaming(gen, reqs)

        async def make() -> Response:
            await self._wait_all(reqs)
            out = []
            completion = 0
            for c in choices:
                out.append(self._chat_choice(c, req.logprobs, req.top_logprobs or 0))
                completion += len(c.req.output)
            body = render.chat_body(rid, created, model, out, Usage(len(prompt), completion))
            return reply_json(body)

        return await self._run(request, reqs, make)

    def _check_tools(self, req: ChatCompletionRequest) -> None:
        choice = req.tool_choice
        if choice == "auto" and not (self.s.auto_tool_choice and self.s.tool_call_parser):
            raise BadRequestError(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            )
        if isinstance(choice, NamedToolChoice):
            name = choice.function.name
            if not self.s.tool_call_parser:
                raise BadRequestError(f'tool_choice=function "{name}" requires --tool-call-parser to be set')
            if not any(t.function.name == name for t in req.tools or ()):
                raise BadRequestError(f"Tool '{name}' has not been passed in `tools`.", param="tool_choice")
        if choice is not None and not req.tools and choice != "none":
            raise BadRequestError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
        if choice is None and req.tools and not (self.s.auto_tool_choice and self.s.tool_call_parser):
            # vLLM treats tools without tool_choice as "auto" only when auto tool choice is enabled.
            req.tool_choice = "none"

    def _chat_choice(self, c: _Choice, logprobs: bool | None, top: int) -> dict[str, Any]:
        tokens = c.req.output
        script_tool = c.tool.script if c.tool else None
        if script_tool is not None and c.req.finish_reason == "stop":
            call = {
                "id": script_tool.call_id,
                "type": "function",
                "function": {"name": script_tool.tool_name, "arguments": script_tool.arguments},
            }
            self.stats.on_tool_parse(streaming=False, called=True)
            message = render.chat_message(None, [call])
            return render.chat_choice(c.index, message, None, "tool_calls", None)
        if self.s.tool_call_parser:
            self.stats.on_tool_parse(streaming=False, called=False)
        text = c.final_text(self._text_of(tokens))
        reason, stop_reason = self._finish_of(c)
        lp = None
        if logprobs:
            tt = self.tokenizer.token_text
            lp = {"content": [render.token_logprob(tt(t), c.req.rng, top) for t in tokens if t != IM_END]}
        return render.chat_choice(c.index, render.chat_message(text, None), lp, reason, stop_reason)

    async def _chat_stream(
        self,
        choices: list[_Choice],
        prompt_len: int,
        rid: str,
        created: int,
        model: str,
        include_usage: bool,
        top: int,
    ) -> AsyncIterator[bytes]:
        enc = render.ChatChunks(rid, created, model)
        crash = self._crash_point()
        sent = 0
        for c in choices:
            yield enc.role(c.index)
        async for c, tokens, finish in _merge(choices):
            out: list[bytes] = []
            tt = self.tokenizer.token_text
            last = len(tokens) - 1
            for k, tok in enumerate(tokens):
                text = "" if tok == IM_END else tt(tok)
                lp = {"content": [render.token_logprob(text, c.req.rng, top)]} if top >= 0 else None
                ending = finish if k == last else None
                if c.tool is not None:
                    delta = c.tool.delta(tok)
                    if self.s.tool_call_parser:
                        self.stats.on_tool_parse(streaming=True, called=delta is not None)
                    if ending is not None:
                        reason = "tool_calls" if ending == "stop" else ending
                        out.append(enc.finish(c.index, {}, reason, None, not include_usage))
                    elif delta is not None:
                        out.append(enc.delta(c.index, delta, lp))
                    continue
                if ending is not None and c.stop_hit is not None:
                    delta = {"content": c.hit_piece}
                    out.append(enc.finish(c.index, delta, "stop", c.stop_hit, not include_usage, lp))
                elif ending is not None:
                    out.append(enc.finish(c.index, {"content": text}, ending, None, not include_usage, lp))
                else:
                    out.append(enc.content(c.index, text, lp))
            if out:
                yield b"".join(out)
            sent += len(tokens)
            if crash is not None and sent >= crash:
                raise _Crash
        if include_usage:
            completion = sum(len(c.req.output) for c in choices)
            yield enc.usage(Usage(prompt_len, completion))
        yield render.DONE

    def _streaming(self, gen: AsyncIterator[bytes], reqs: list[EngineRequest]) -> Response:
        async def guarded() -> AsyncIterator[bytes]:
            self.in_flight += 1
            try:
                async for chunk in gen:
                    yield chunk
            except _Crash:
                os._exit(1)
            finally:
                self.in_flight -= 1
                for r in reqs:
                    self.engine.abort(r)

        return StreamingResponse(guarded(), media_type="text/event-stream; charset=utf-8")

    # ---- completions -----------------------------------------------------------------------------------
    def _prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        if isinstance(prompt, str):
            return [list(self.tokenizer.encode(prompt))]
        if not prompt:
            raise BadRequestError("Prompt cannot be empty", param="prompt")
        if isinstance(prompt[0], int):
            return [list(prompt)]
        if isinstance(prompt[0], str):
            return [list(self.tokenizer.encode(p)) for p in prompt]
        return [list(p) for p in prompt]

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
                if any(t < 0 or t >= self.tokenizer.vocab_size for t in p):
                    raise BadRequestError("Token id out of vocabulary range", param="prompt")
            stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
            choices: list[_Choice] = []
            for pi, p in enumerate(prompts):
                max_tokens = resolve_max_tokens(req.max_tokens or 16, len(p), self.s.engine.max_model_len)
                for i in range(req.n):
                    seed = None if req.seed is None else req.seed + i
                    er = self._new_request(p, max_tokens, seed, req.ignore_eos, lora, req.n, None)
                    choices.append(_Choice(pi * req.n + i, er, stops, self.tokenizer.token_text))
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
        choices: list[_Choice],
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
        async for c, tokens, finish in _merge(choices):
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
                raise _Crash
        if include_usage:
            completion = sum(len(c.req.output) for c in choices)
            yield enc.usage(Usage(prompt_tokens, completion))
        yield render.DONE

    # ---- responses -------------------------------------------------------------------------------------
    async def responses(self, request: Request) -> Response:
        received = asyncio.get_running_loop().time()
        try:
            req = validate(ResponsesRequest, await self._body(request))
            lora = self._check_model(req.model)
            messages: list[dict[str, Any]] = []
            if req.instructions:
                messages.append({"role": "system", "content": req.instructions})
            if isinstance(req.input, str):
                messages.append({"role": "user", "content": req.input})
            else:
                messages += [_response_item_message(item) for item in req.input]
            prompt = render_chat(self.tokenizer, messages)
            max_tokens = resolve_max_tokens(req.max_output_tokens, len(prompt), self.s.engine.max_model_len)
            er = self._new_request(prompt, max_tokens, None, False, lora, 1, None)
            if not await self._admit(request, [er], received):
                return Response(status_code=499)
        except OpenAIError as e:
            return reply_error(e)
        model = req.model or self.model_name
        rid = random_id("resp_")
        mid = random_id("msg_")
        created = int(time.time())
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p

        def body(text: str, status: str) -> dict[str, Any]:
            return render.response_body(
                rid, mid, created, model, text, status, req.max_output_tokens, temperature, top_p,
                Usage(len(prompt), len(er.output)),
            )  # fmt: skip

        if req.stream:
            return self._streaming(self._responses_stream(er, body, mid), [er])

        async def make() -> Response:
            await self._wait_all([er])
            status = "incomplete" if er.finish_reason == "length" else "completed"
            return reply_json(body(self._text_of(er.output), status))

        return await self._run(request, [er], make)

    async def _responses_stream(
        self, er: EngineRequest, body: Callable[[str, str], dict[str, Any]], mid: str
    ) -> AsyncIterator[bytes]:
        seq = 0

        def event(kind: str, payload: dict[str, Any]) -> bytes:
            nonlocal seq
            data = {"type": kind, **payload, "sequence_number": seq}
            seq += 1
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        item = {"id": mid, "content": [], "role": "assistant", "status": "in_progress", "type": "message"}
        part: dict[str, Any] = {"annotations": [], "text": "", "type": "output_text", "logprobs": None}
        yield event("response.created", {"response": body("", "in_progress")})
        yield event("response.in_progress", {"response": body("", "in_progress")})
        yield event("response.output_item.added", {"output_index": 0, "item": item})
        yield event(
            "response.content_part.added",
            {"item_id": mid, "output_index": 0, "content_index": 0, "part": part},
        )
        pieces: list[str] = []
        while True:
            tokens, finish = await er.next_tokens()
            text = self._text_of(tokens)
            pieces.append(text)
            if tokens:
                where = {"item_id": mid, "output_index": 0, "content_index": 0}
                yield event("response.output_text.delta", {**where, "delta": text, "logprobs": []})
            if finish is not None:
                break
        full = "".join(pieces)
        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        yield event("response.output_text.done", {**where, "text": full, "logprobs": []})
        yield event("response.content_part.done", {**where, "part": {**part, "text": full}})
        done_item = {**item, "status": "completed", "content": [{**part, "text": full}]}
        yield event("response.output_item.done", {"output_index": 0, "item": done_item})
        status = "incomplete" if er.finish_reason == "length" else "completed"
        yield event(f"response.{status}", {"response": body(full, status)})

    # ---- embeddings ------------------------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        received = asyncio.get_running_loop().time()
        try:
            req = validate(EmbeddingRequest, await self._body(request))
            self._check_model(req.model)
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
        dim = req.dimensions or self.profile.embedding_dim
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


async def _merge(choices: list[_Choice]) -> AsyncIterator[tuple[_Choice, list[int], str | None]]:
    """Token batches of all choices as they come; one choice (the common case) needs no tasks."""
    if len(choices) == 1:
        c = choices[0]
        while True:
            tokens, finish = await c.req.next_tokens()
            yield c, tokens, finish
            if finish is not None:
                return
    queue: asyncio.Queue[tuple[_Choice, list[int], str | None]] = asyncio.Queue()

    async def pump(c: _Choice) -> None:
        while True:
            tokens, finish = await c.req.next_tokens()
            await queue.put((c, tokens, finish))
            if finish is not None:
                return

    tasks = [asyncio.ensure_future(pump(c)) for c in choices]
    try:
        live = len(choices)
        while live:
            c, tokens, finish = await queue.get()
            yield c, tokens, finish
            if finish is not None:
                live -= 1
    finally:
        for t in tasks:
            t.cancel()


def _response_item_message(item: dict[str, Any]) -> dict[str, Any]:
    content: Any = item.get("content", "")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return {"role": item.get("role", "user"), "content": content}


def _embed(tokens: Sequence[int], dim: int) -> list[float]:
    """A normalised bag-of-tokens projection: texts sharing tokens get close vectors, as real ones do."""
    vec = [0.0] * dim
    for t in tokens:
        h = zlib.crc32(t.to_bytes(4, "little"))
        vec[h % dim] += 1.0 if (h >> 16) & 1 else -1.0
        vec[(h >> 8) % dim] += 0.5
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
