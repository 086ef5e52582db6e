"""The HTTP surface: vLLM's routes and response shapes in front of the engine (or the embedding queue).

Bodies are validated and rendered by the worker kit (fleetgate.worker), which reproduces vLLM 0.26 byte
for byte, so a client or the gateway sees the same wire from the simulator, the embedded engine and vLLM.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from fleetgate import __version__
from fleetgate.engines.embedded import streams
from fleetgate.engines.embedded.batcher import Engine, EngineLimits, Sequence
from fleetgate.engines.embedded.embeddings import EmbedQueue
from fleetgate.engines.embedded.grammar import Grammars
from fleetgate.engines.embedded.loader import Plan
from fleetgate.engines.embedded.metrics import Stats
from fleetgate.engines.embedded.output import TextOutput
from fleetgate.engines.embedded.prompts import Defaults, message_dict, render_chat
from fleetgate.engines.embedded.settings import EngineSettings
from fleetgate.engines.embedded.tools import parse
from fleetgate.protocol import (
    BadRequestError,
    InternalServerError,
    OpenAIError,
    Usage,
    model_not_found,
    random_id,
)
from fleetgate.worker import render
from fleetgate.worker import requests as bodies
from fleetgate.worker.metrics import EngineView
from fleetgate.worker.replies import reply_error, reply_json, unless_gone
from fleetgate.worker.shell import Served, Shell, worker_app

Body = TypeVar("Body", bound=bodies.Body)
Sampled = bodies.ChatCompletionRequest | bodies.CompletionRequest


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What the routes need to know about the model being served."""

    names: list[str]
    path: Path
    max_model_len: int
    tokenizer: Any
    vocab_size: int
    device: torch.device


class EmbeddedServer:
    def __init__(
        self,
        model: ServedModel,
        stats: Stats,
        engine: Engine | None = None,
        grammars: Grammars | None = None,
        embeddings: EmbedQueue | None = None,
    ) -> None:
        self.m = model
        self.name = model.names[0]
        self.stats = stats
        self.engine = engine
        self.grammars = grammars
        self.embeddings = embeddings
        self.defaults = Defaults(model.path)
        self.created = int(time.time())
        view = engine if engine is not None else embeddings
        assert view is not None, "a server has an engine or an embedding queue"
        self.view: EngineView = view

    def app(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/version", self.version, methods=["GET"]),
            *self.shell().routes(),
        ]
        if self.engine is not None:
            routes += [
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
            ]
        else:
            routes.append(Route("/v1/embeddings", self.embed, methods=["POST"]))

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            if self.engine is not None:
                self.engine.start(asyncio.get_running_loop())
            try:
                yield
            finally:
                if self.engine is not None:
                    await asyncio.to_thread(self.engine.stop)
                if self.embeddings is not None:
                    await self.embeddings.stop()

        return worker_app(routes, lifespan)

    # ---- plain routes ----------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        dead = self.engine is not None and not self.engine.alive
        return Response(status_code=500 if dead else 200)

    async def version(self, request: Request) -> Response:
        return reply_json({"version": __version__})

    def model_cards(self) -> list[dict[str, Any]]:
        root, length = str(self.m.path), self.m.max_model_len
        return [render.model_card(name, root, None, length, self.created) for name in self.m.names]

    def shell(self) -> Shell:
        page = lambda: self.stats.render(self.view)  # noqa: E731
        return Shell(
            Served(
                self.m.max_model_len, _HFTokens(self.m.tokenizer), self._check_model, self.model_cards, page
            )
        )

    def _check_model(self, model: str | None) -> None:
        if model is not None and model not in self.m.names:
            raise model_not_found(model)

    async def _read(self, request: Request, kind: type[Body]) -> Body:
        """The body, validated as vLLM validates it, for a model this server serves."""
        body = bodies.validate(kind, bodies.parse_json(await request.body()))
        self._check_model(getattr(body, "model", None))
        return body

    # ---- generation plumbing ---------------------------------------------------------------------------
    def _sequences(
        self, prompt: list[int], body: Sampled, max_tokens: int, matcher: Any, arrival: float
    ) -> list[Sequence]:
        seqs = []
        backend = self.m.tokenizer.backend_tokenizer
        for i in range(body.n):
            seed = None if body.seed is None else body.seed + i
            params = self.defaults.params(body, max_tokens, seed)
            generator = None
            if seed is not None:
                generator = torch.Generator(device=self.m.device).manual_seed(seed)
            # Copies are taken now, before the first matcher has consumed anything.
            own = matcher if matcher is None or i == 0 else matcher.deep_copy()
            text = TextOutput(backend, params.stop)
            seqs.append(
                Sequence(
                    prompt, params, text, matcher=own, generator=generator, params_n=body.n, arrival=arrival
                )
            )
        return seqs

    async def _serve(
        self, request: Request, seqs: list[Sequence], make: Callable[[], Awaitable[Response]]
    ) -> Response:
        """A non-streamed answer; if the client leaves first the sequences are aborted."""
        assert self.engine is not None
        self.engine.add(seqs)
        try:
            return await unless_gone(request, make())
        finally:
            self.engine.abort(seqs)

    def _stream(self, seqs: list[Sequence], chunks: AsyncIterator[bytes]) -> Response:
        assert self.engine is not None
        engine = self.engine
        engine.add(seqs)

        async def guarded() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                engine.abort(seqs)

        return StreamingResponse(guarded(), media_type="text/event-stream; charset=utf-8")

    # ---- chat ------------------------------------------------------------------------------------------
    def _tool_mode(self, req: bodies.ChatCompletionRequest) -> tuple[str, list[dict[str, Any]]]:
        """("none" | "auto" | "forced", the tools a forced call may use), with vLLM's 400s."""
        tools = [t.model_dump(exclude_none=True) for t in req.tools or ()]
        choice = req.tool_choice
        if choice is not None and choice != "none" and not tools:
            raise BadRequestError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
        if isinstance(choice, bodies.NamedToolChoice):
            named = [t for t in tools if t["function"]["name"] == choice.function.name]
            if not named:
                raise BadRequestError(
                    f"Tool '{choice.function.name}' has not been passed in `tools`.", param="tool_choice"
                )
            return "forced", named
        if not tools or choice == "none":
            return "none", tools
        return ("forced" if choice == "required" else "auto"), tools

    async def chat(self, request: Request) -> Response:
        arrival = time.monotonic()
        try:
            req = await self._read(request, bodies.ChatCompletionRequest)
            bodies.check_sampling(req)
            _unsupported(logprobs=bool(req.logprobs))
            mode, callable_tools = self._tool_mode(req)
            tools = [t.model_dump(exclude_none=True) for t in req.tools or ()]
            messages = [message_dict(m) for m in req.messages]
            prompt = render_chat(self.m.tokenizer, messages, tools or None)
            max_tokens = bodies.resolve_chat_max_tokens(req, len(prompt), self.m.max_model_len)
            assert self.grammars is not None
            grammar = None
            if mode == "forced":
                grammar = self.grammars.tool_calls(callable_tools, several=bool(req.parallel_tool_calls))
            elif req.response_format:
                grammar = self.grammars.response_format(req.response_format)
            matcher = await asyncio.to_thread(self.grammars.matcher, grammar) if grammar else None
            seqs = self._sequences(prompt, req, max_tokens, matcher, arrival)
        except OpenAIError as e:
            return reply_error(e)
        model = req.model or self.name
        rid, created = random_id("chatcmpl-"), int(time.time())
        parse_tools = mode != "none"
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            enc = render.ChatChunks(rid, created, model)
            return self._stream(
                seqs,
                streams.chat_chunks(enc, seqs, len(prompt), usage, parse_tools, self._count_streamed_parse),
            )

        async def make() -> Response:
            results = await streams.collect(seqs)
            choices = []
            for i, (text, reason, stop_reason) in enumerate(results):
                if reason == "error":
                    return reply_error(InternalServerError(streams.FAILED))
                content, calls = parse(text) if parse_tools else (text, [])
                if parse_tools:
                    self._count_tool_parse(streaming=False, called=bool(calls))
                if calls and reason == "stop":
                    reason = "tool_calls"
                message = render.chat_message(content, [c.to_dict() for c in calls] or None)
                choices.append(render.chat_choice(i, message, None, reason, stop_reason))
            usage = Usage(len(prompt), sum(len(s.output) for s in seqs))
            return reply_json(render.chat_body(rid, created, model, choices, usage))

        return await self._serve(request, seqs, make)

    def _count_tool_parse(self, streaming: bool, called: bool) -> None:
        with self.stats.lock:
            self.stats.engine.on_tool_parse(streaming=streaming, called=called)

    def _count_streamed_parse(self, called: bool) -> None:
        self._count_tool_parse(streaming=True, called=called)

    # ---- completions -----------------------------------------------------------------------------------
    def _prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        tok = self.m.tokenizer
        if isinstance(prompt, str):
            prompts = [tok.encode(prompt)]
        elif prompt and isinstance(prompt[0], str):
            prompts = [tok.encode(p) for p in prompt]
        elif prompt and isinstance(prompt[0], int):
            prompts = [list(prompt)]
        else:
            prompts = [list(p) for p in cast(list[list[int]], prompt)]
        for p in prompts:
            if not p:
                raise BadRequestError("Prompt cannot be empty", param="prompt")
            if any(not 0 <= t < self.m.vocab_size for t in p):
                raise BadRequestError("Token id out of vocabulary range", param="prompt")
        return prompts

    async def completions(self, request: Request) -> Response:
        arrival = time.monotonic()
        try:
            req = await self._read(request, bodies.CompletionRequest)
            bodies.check_sampling(req)
            _unsupported(logprobs=req.logprobs is not None, echo=bool(req.echo))
            prompts = self._prompts(req.prompt)
            seqs: list[Sequence] = []
            for p in prompts:
                max_tokens = bodies.resolve_max_tokens(req.max_tokens or 16, len(p), self.m.max_model_len)
                seqs += self._sequences(p, req, max_tokens, None, arrival)
        except OpenAIError as e:
            return reply_error(e)
        model = req.model or self.name
        rid, created = random_id("cmpl-"), int(time.time())
        prompt_tokens = sum(map(len, prompts))
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            enc = render.CompletionChunks(rid, created, model)
            return self._stream(seqs, streams.completion_chunks(enc, seqs, prompt_tokens, usage))

        async def make() -> Response:
            results = await streams.collect(seqs)
            if any(reason == "error" for _, reason, _ in results):
                return reply_error(InternalServerError(streams.FAILED))
            choices = [
                render.completion_choice(i, text, None, reason, stop)
                for i, (text, reason, stop) in enumerate(results)
            ]
            usage = Usage(prompt_tokens, sum(len(s.output) for s in seqs))
            return reply_json(render.completion_body(rid, created, model, choices, usage))

        return await self._serve(request, seqs, make)

    # ---- embeddings ------------------------------------------------------------------------------------
    async def embed(self, request: Request) -> Response:
        assert self.embeddings is not None
        try:
            req = await self._read(request, bodies.EmbeddingRequest)
            if req.dimensions is not None:
                raise BadRequestError(
                    f'Model "{self.name}" does not support matryoshka representation, changing output '
                    "dimensions will lead to poor results.",
                    param="dimensions",
                )
            prompts = self._prompts(req.input)
            for p in prompts:
                if len(p) > self.m.max_model_len:
                    raise BadRequestError(
                        f"This model's maximum context length is {self.m.max_model_len} tokens. However, you "
                        f"requested {len(p)} tokens in the input for embedding generation. Please reduce the "
                        "length of the input.",
                        param="input_tokens",
                    )
            vectors = await self.embeddings.embed(prompts)
        except OpenAIError as e:
            return reply_error(e)
        data = []
        for i, v in enumerate(vectors):
            value: Any = v
            if req.encoding_format == "base64":
                value = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            data.append({"index": i, "object": "embedding", "embedding": value})
        total = sum(map(len, prompts))
        usage = {
            "prompt_tokens": total,
            "total_tokens": total,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        }
        head = {
            "id": random_id("embd-"),
            "object": "list",
            "created": int(time.time()),
            "model": req.model or self.name,
        }
        return reply_json({**head, "data": data, "usage": usage})


def _unsupported(**asked: bool) -> None:
    """A clear 400 for what vLLM does and this engine does not, rather than an answer without it."""
    for name, wanted in asked.items():
        if wanted:
            raise BadRequestError(f"{name} is not supported by fleetgate's embedded engine", param=name)


class _HFTokens:
    """A transformers tokenizer as the shell's `Tokens`, rendering chats with the model's template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return cast(list[int], self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int]) -> str:
        return cast(str, self.tokenizer.decode(ids))

    def chat(
        self,
        messages: list[bodies.ChatMessage],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
    ) -> list[int]:
        return render_chat(self.tokenizer, [message_dict(m) for m in messages], tools, add_generation_prompt)


def build(settings: EngineSettings, plan: Plan, model: Any, tokenizer: Any) -> EmbeddedServer:
    """The server for a loaded model: the engine and its KV cache for generation, a queue for embeddings."""
    from fleetgate.engines.embedded.attention import PagedKV
    from fleetgate.engines.embedded.embeddings import Embedder
    from fleetgate.engines.embedded.prompts import eos_ids
    from fleetgate.engines.embedded.runner import ModelRunner
    from fleetgate.engines.embedded.sampling import Sampler

    config = plan.config
    vocab = int(getattr(config, "vocab_size", len(tokenizer)))
    names = settings.served_model_names or [settings.model]
    served = ServedModel(names, plan.path, plan.max_model_len, tokenizer, vocab, plan.device)
    cache_info = {
        "block_size": str(plan.block_size),
        "cache_dtype": "auto",
        "enable_prefix_caching": str(settings.enable_prefix_caching),
        "kv_cache_size_tokens": str(plan.kv_tokens),
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(plan.num_blocks),
    }
    stats = Stats(served.names[0], cache_info)
    if plan.task == "embed":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        queue = EmbedQueue(Embedder(model, plan.device, pad), settings.max_num_batched_tokens)
        return EmbeddedServer(served, stats, embeddings=queue)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    kv = PagedKV(
        int(config.num_hidden_layers), plan.num_blocks, plan.block_size, kv_heads, head_dim, plan.dtype,
        plan.device,
    )  # fmt: skip
    eos = eos_ids(tokenizer, config, plan.path)
    limits = EngineLimits(
        settings.max_num_seqs, settings.max_num_batched_tokens, plan.max_model_len, plan.block_size,
        plan.num_blocks, settings.enable_prefix_caching,
    )  # fmt: skip
    engine = Engine(
        ModelRunner(model, kv, plan.block_size, plan.device),
        Sampler(eos, settings.seed, plan.device),
        limits,
        stats,
        eos,
        vocab,
    )
    return EmbeddedServer(served, stats, engine, Grammars(tokenizer, vocab, sorted(eos)))
