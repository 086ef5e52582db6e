"""The simulator's control surface: runtime LoRA, vLLM's dev-mode endpoints and its own admin endpoints."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from fleetgate.protocol import BadRequestError, InvalidUserInputError, NotFoundError, OpenAIError
from fleetgate.sim.engine import Engine, EngineRequest
from fleetgate.sim.faults import Faults
from fleetgate.sim.profiles import Profile
from fleetgate.sim.settings import SimSettings
from fleetgate.tokenizer import Tokenizer, render_chat
from fleetgate.worker.kvcache import chain_hashes, lora_key
from fleetgate.worker.replies import reply_error, reply_json
from fleetgate.worker.requests import (
    Body,
    ChatMessage,
    LoadLoRARequest,
    ToolDef,
    UnloadLoRARequest,
    parse_json,
    validate,
)


class MatchRequest(Body):
    prompt: str | list[int] | None = None
    messages: list[ChatMessage] | None = None
    tools: list[ToolDef] | None = None
    lora: str | None = None


class Controlled(Protocol):
    """What the control routes read and change on the server (a protocol, so control.py and server.py do not
    import each other): the adapters and faults it replaces are the server's own, read by every request."""

    s: SimSettings
    profile: Profile
    engine: Engine
    tokenizer: Tokenizer
    loras: dict[str, str]
    faults: Faults


async def _body(request: Request) -> Any:
    return parse_json(await request.body())


class Control:
    def __init__(self, srv: Controlled) -> None:
        self.srv = srv

    def routes(self) -> list[Route]:
        s = self.srv.s
        routes: list[Route] = []
        if s.runtime_lora:
            routes += [
                Route("/v1/load_lora_adapter", self.load_lora, methods=["POST"]),
                Route("/v1/unload_lora_adapter", self.unload_lora, methods=["POST"]),
            ]
        if s.dev_mode:
            routes += [
                Route("/reset_prefix_cache", self.reset_prefix_cache, methods=["POST"]),
                Route("/sleep", self.sleep, methods=["POST"]),
                Route("/wake_up", self.wake_up, methods=["POST"]),
                Route("/is_sleeping", self.is_sleeping, methods=["GET"]),
            ]
        if s.admin:
            routes += [
                Route("/_sim/state", self.admin_state, methods=["GET"]),
                Route("/_sim/match", self.admin_match, methods=["POST"]),
                Route("/_sim/faults", self.admin_faults, methods=["GET", "POST"]),
            ]
        return routes

    # ---- LoRA ------------------------------------------------------------------------------------------
    async def load_lora(self, request: Request) -> Response:
        try:
            req = validate(LoadLoRARequest, await _body(request))
            if req.lora_name in self.srv.loras and not req.load_inplace:
                raise InvalidUserInputError(
                    f"The lora adapter '{req.lora_name}' has already been loaded. If you want to load the "
                    "adapter in place, set 'load_inplace' to True."
                )
            if not adapter_exists(req.lora_path):
                raise NotFoundError(
                    f"Loading lora {req.lora_name} failed: No adapter found for {req.lora_path}"
                )
        except OpenAIError as e:
            return reply_error(e)
        await asyncio.sleep(self.srv.profile.lora_load_seconds / self.srv.s.engine.time_scale)
        self.srv.loras[req.lora_name] = req.lora_path
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    async def unload_lora(self, request: Request) -> Response:
        try:
            req = validate(UnloadLoRARequest, await _body(request))
            if req.lora_name not in self.srv.loras:
                raise NotFoundError(f"The lora adapter '{req.lora_name}' cannot be found.")
        except OpenAIError as e:
            return reply_error(e)
        del self.srv.loras[req.lora_name]
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    # ---- dev mode --------------------------------------------------------------------------------------
    async def reset_prefix_cache(self, request: Request) -> Response:
        return reply_json({"success": self.srv.engine.kv.reset()})

    async def sleep(self, request: Request) -> Response:
        if not self.srv.s.enable_sleep_mode:
            return reply_error(
                BadRequestError("Sleep mode is not enabled. Set --enable-sleep-mode to use it.")
            )
        try:
            level = int(request.query_params.get("level", "1"))
        except ValueError:
            level = 0
        if level not in (1, 2):
            return reply_error(BadRequestError(f"Invalid sleep level {level}: use 1 or 2.", param="level"))
        await self.srv.engine.sleep(level)
        return Response(status_code=200)

    async def wake_up(self, request: Request) -> Response:
        await self.srv.engine.wake_up()
        return Response(status_code=200)

    async def is_sleeping(self, request: Request) -> Response:
        return reply_json({"is_sleeping": self.srv.engine.is_sleeping})

    # ---- admin (simulator only, off by default) --------------------------------------------------------
    async def admin_state(self, request: Request) -> Response:
        eng = self.srv.engine

        def row(r: EngineRequest) -> dict[str, Any]:
            return {
                "id": r.rid,
                "prompt_tokens": len(r.prompt),
                "output_tokens": len(r.output),
                "computed_tokens": r.computed,
                "cached_tokens": max(r.cached_tokens, 0),
                "lora": r.lora,
                "deferred": r.deferred,
            }

        return reply_json(
            {
                "kv_usage": eng.kv.usage(),
                "num_gpu_blocks": eng.kv.num_blocks,
                "free_blocks": eng.kv.num_free,
                "cached_block_hashes": eng.kv.cached_hashes(),
                "running": [row(r) for r in eng.running],
                "waiting": [row(r) for r in eng.waiting],
                "sleep_level": eng.sleep_level,
                "loras": self.srv.loras,
                "faults": self.srv.faults.model_dump(),
            }
        )

    async def admin_match(self, request: Request) -> Response:
        """How many tokens of a prompt this server has cached now, and its queue: an oracle's inputs."""
        try:
            req = validate(MatchRequest, await _body(request))
            tok = self.srv.tokenizer
            if req.messages is not None:
                messages = [m.model_dump(exclude_none=True) for m in req.messages]
                ids = render_chat(
                    tok, messages, [t.model_dump(exclude_none=True) for t in req.tools or ()] or None
                )
            elif isinstance(req.prompt, str):
                ids = list(tok.encode(req.prompt))
            else:
                ids = list(req.prompt or [])
            lora = req.lora
        except OpenAIError as e:
            return reply_error(e)
        eng = self.srv.engine
        bs = self.srv.s.engine.block_size
        hashes = chain_hashes(ids, bs, lora_key(lora) if lora else 0)
        hit = eng.kv.longest_hit(hashes[: (len(ids) - 1) // bs]) * bs if ids else 0
        waiting_tokens = sum(r.total_len - r.computed for r in eng.waiting)
        return reply_json(
            {
                "prompt_tokens": len(ids),
                "hit_tokens": hit,
                "running": len(eng.running),
                "waiting": len(eng.waiting),
                "waiting_tokens": waiting_tokens,
                "kv_usage": eng.kv.usage(),
            }
        )

    async def admin_faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await _body(request)
                self.srv.faults = Faults.model_validate({**self.srv.faults.model_dump(), **body})
            except OpenAIError as e:
                return reply_error(e)
            except ValueError as e:
                return reply_error(BadRequestError(str(e)))
        return reply_json(self.srv.faults.model_dump(mode="json"))  # status keys as JSON strings


def adapter_exists(path: str) -> bool:
    # A local path must exist, as vLLM reads it from disk; anything else is a hub id vLLM would download.
    if path.startswith(("/", ".", "~")):
        return os.path.exists(os.path.expanduser(path))
    return bool(path)
