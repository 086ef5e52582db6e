"""What every simulated generation route shares: the engine and its counters, admission with faults
and overhead, model checks, and serving an answer that stops when the client leaves."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from fleetgate.protocol import BadRequestError, model_not_found, random_id
from fleetgate.sim.choices import Choice, Crash
from fleetgate.sim.engine import Engine, EngineRequest
from fleetgate.sim.faults import fault_error
from fleetgate.sim.kv_publisher import KVEventPublisher
from fleetgate.sim.scripts import Script
from fleetgate.sim.settings import SimSettings
from fleetgate.tokenizer import IM_END, TextSampler, Tokenizer
from fleetgate.worker.metrics import EngineStats
from fleetgate.worker.replies import unless_gone, until_disconnect
from fleetgate.worker.requests import parse_json

# Mean length of an answer that ends on its own (no ignore_eos): chat answers run a few hundred tokens.
NATURAL_OUTPUT_MEDIAN = 160


class SimCore:
    """The server's state and the steps the API surfaces (chat.py, completions.py, responses.py,
    embeddings.py) share; server.py puts the surfaces together."""

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

    def _check_model(self, model: str | None) -> str | None:
        """The LoRA adapter a request names (None for the base model); 404 for anything unknown."""
        if model is None or model in self.s.served_model_names:
            return None
        if model in self.loras:
            return model
        raise model_not_found(model)

    async def _body(self, request: Request) -> Any:
        return parse_json(await request.body())

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

    def _finish_of(self, choice: Choice) -> tuple[str, str | None]:
        if choice.stop_hit is not None:
            return "stop", choice.stop_hit
        return choice.req.finish_reason or "stop", None

    def _streaming(self, gen: AsyncIterator[bytes], reqs: list[EngineRequest]) -> Response:
        async def guarded() -> AsyncIterator[bytes]:
            self.in_flight += 1
            try:
                async for chunk in gen:
                    yield chunk
            except Crash:
                os._exit(1)
            finally:
                self.in_flight -= 1
                for r in reqs:
                    self.engine.abort(r)

        return StreamingResponse(guarded(), media_type="text/event-stream; charset=utf-8")

    def _prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        if isinstance(prompt, str):
            return [list(self.tokenizer.encode(prompt))]
        if not prompt:
            raise BadRequestError("Prompt cannot be empty", param="prompt")
        if isinstance(prompt[0], str):
            return [list(self.tokenizer.encode(p)) for p in prompt]
        prompts = [list(prompt)] if isinstance(prompt[0], int) else [list(p) for p in prompt]
        for p in prompts:
            if any(t < 0 or t >= self.tokenizer.vocab_size for t in p):
                raise BadRequestError("Token id out of vocabulary range", param="prompt")
        return prompts
