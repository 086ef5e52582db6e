"""/v1/responses (the Responses API) on the simulated engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fleetgate.protocol import OpenAIError, Usage, random_id
from fleetgate.sim.core import SimCore
from fleetgate.sim.engine import EngineRequest
from fleetgate.tokenizer import render_chat
from fleetgate.worker import render
from fleetgate.worker.replies import reply_error, reply_json
from fleetgate.worker.requests import ResponsesRequest, resolve_max_tokens, validate


class ResponsesRoutes(SimCore):
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


def _response_item_message(item: dict[str, Any]) -> dict[str, Any]:
    content: Any = item.get("content", "")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return {"role": item.get("role", "user"), "content": content}
