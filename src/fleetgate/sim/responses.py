"""/v1/responses (the Responses API) on the simulated engine: text and function calls."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fleetgate.protocol import (
    BadRequestError,
    OpenAIError,
    Usage,
    random_id,
)
from fleetgate.sim.choices import sampling_seed
from fleetgate.sim.core import SimCore
from fleetgate.sim.engine import EngineRequest
from fleetgate.sim.responses_tools import call_item, chat_input, chat_tools, tool_mode
from fleetgate.sim.scripts import ToolStream, pick_tool, tool_script
from fleetgate.tokenizer import render_chat
from fleetgate.worker import render
from fleetgate.worker.replies import reply_error, reply_json
from fleetgate.worker.requests import (
    ResponsesRequest,
    resolve_max_tokens,
    validate,
)


class ResponsesRoutes(SimCore):
    async def responses(self, request: Request) -> Response:
        received = asyncio.get_running_loop().time()
        try:
            req = validate(ResponsesRequest, await self._body(request))
            lora = self._check_model(req.model)
            messages = chat_input(req.instructions, req.input)
            tools = chat_tools(req.tools)
            mode, named = tool_mode(req.tool_choice, tools)
            if mode == "auto" and not (self.s.auto_tool_choice and self.s.tool_call_parser):
                raise BadRequestError(
                    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
                )
            if mode is None and named is None and not (self.s.auto_tool_choice and self.s.tool_call_parser):
                mode = "none"  # as in chat: tools without a choice are "auto" only when that is enabled
            prompt = render_chat(self.tokenizer, messages, tools or None)
            max_tokens = resolve_max_tokens(req.max_output_tokens, len(prompt), self.s.engine.max_model_len)
            seed = sampling_seed(None, 0, req.temperature, prompt, lora)
            rng = random.Random(seed if seed is not None else self.rng.getrandbits(64))
            tool = pick_tool(tools, mode, named, messages[-1]["role"] if messages else None)
            script = tool_script(self.tokenizer, tool, rng) if tool is not None else None
            er = self._new_request(prompt, max_tokens, seed, False, lora, 1, script)
            if not await self._admit(request, [er], received):
                return Response(status_code=499)
        except OpenAIError as e:
            return reply_error(e)
        model = req.model or self.model_name
        rid = random_id("resp_")
        mid = random_id("msg_") if script is None else random_id("fc_")
        created = int(time.time())
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")

        def body(text: str, status: str) -> dict[str, Any]:
            calls = [call_item(script, mid, text, "completed")] if script is not None else None
            return render.response_body(
                rid, mid, created, model, text, status, req.max_output_tokens, temperature, top_p,
                Usage(len(prompt), len(er.output)), calls, choice, req.tools,
            )  # fmt: skip

        if req.stream:
            if script is not None:
                gen = self._responses_call_stream(er, body, mid, ToolStream(script))
                return self._streaming(gen, [er])
            return self._streaming(self._responses_stream(er, body, mid), [er])

        async def make() -> Response:
            await self._wait_all([er])
            status = "incomplete" if er.finish_reason == "length" else "completed"
            text = script.arguments if script is not None else self._text_of(er.output)
            return reply_json(body(text, status))

        return await self._run(request, [er], make)

    async def _responses_call_stream(
        self, er: EngineRequest, body: Callable[[str, str], dict[str, Any]], fid: str, tool: ToolStream
    ) -> AsyncIterator[bytes]:
        """A function call streamed as vLLM streams one: the item, argument deltas, the item done."""
        event = _ResponseEvents()
        script = tool.script
        yield event("response.created", {"response": body("", "in_progress")})
        yield event("response.in_progress", {"response": body("", "in_progress")})
        item = call_item(script, fid, "", "in_progress")
        yield event("response.output_item.added", {"output_index": 0, "item": item})
        pieces: list[str] = []
        while True:
            tokens, finish = await er.next_tokens()
            for _ in tokens:
                delta = tool.delta()
                calls = (delta or {}).get("tool_calls") or [{}]
                piece = calls[0].get("function", {}).get("arguments")
                if piece:
                    pieces.append(piece)
                    where = {"item_id": fid, "output_index": 0}
                    yield event("response.function_call_arguments.delta", {**where, "delta": piece})
            if finish is not None:
                break
        arguments = "".join(pieces)
        where = {"item_id": fid, "output_index": 0}
        yield event(
            "response.function_call_arguments.done",
            {**where, "arguments": arguments, "name": script.tool_name},
        )
        yield event(
            "response.output_item.done",
            {"output_index": 0, "item": call_item(script, fid, arguments, "completed")},
        )
        status = "incomplete" if er.finish_reason == "length" else "completed"
        yield event(f"response.{status}", {"response": body(arguments, status)})

    async def _responses_stream(
        self, er: EngineRequest, body: Callable[[str, str], dict[str, Any]], mid: str
    ) -> AsyncIterator[bytes]:
        event = _ResponseEvents()
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


class _ResponseEvents:
    """Responses stream events, numbered in order."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, **payload, "sequence_number": self.seq}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
