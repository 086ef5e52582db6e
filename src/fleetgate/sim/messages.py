"""Anthropic's `/v1/messages` and `/v1/messages/count_tokens` on the simulated engine, as vLLM 0.26 serves
them: on top of the chat route (messages_request.py makes the chat request, messages_events.py the answer).

Errors: a body that fails validation gets vLLM's validation answer in OpenAI's shape (FastAPI's handler is
the same for every route); an error of the request itself (unknown model, a tool choice the server cannot
honour) comes as `{"type": "error", "error": {"type", "message"}}` with the OpenAI error's type and status,
except what vLLM raises rather than returns (an image for this text-only model, a context overrun): a 500
`internal_error`. All as recorded from vLLM 0.26.0 (tests/data/messages_contract.json).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fleetgate.protocol import OpenAIError
from fleetgate.sim.chat import ChatRoutes, ChatRun
from fleetgate.sim.messages_events import MessageEvents, error_body, message_body
from fleetgate.sim.messages_request import CountTokensRequest, MessagesRequest, chat_request
from fleetgate.tokenizer import render_chat
from fleetgate.worker.replies import reply_error, reply_json
from fleetgate.worker.requests import ChatCompletionRequest, ContextLengthError, validate


class _Raised(OpenAIError):
    """What vLLM raises (rather than returns) under its Messages route, which answers every exception so:
    a 500 `internal_error` with the exception's text (recorded from vLLM 0.26: `messages_image_block`,
    `err_too_long` in tests/data/messages_contract.json; only errors vLLM's chat code returns, such as the
    unknown model's 404, keep their status). A vLLM defect, these are the client's mistakes; imitated because
    a pass-through hands them to clients as they are."""

    status = 500
    type = "internal_error"


def _anthropic_error(e: OpenAIError) -> Response:
    if isinstance(e, ContextLengthError):  # a 400 on the chat route, raised under this one
        e = _Raised(e.message)
    return Response(error_body(e.type, e.message), status_code=e.status, media_type="application/json")


def _text_only(chat: ChatCompletionRequest, model: str) -> None:
    """The simulated model reads no images: vLLM raises when it renders an image part for such a model."""
    for m in chat.messages:
        if isinstance(m.content, list) and any(p.get("type") == "image_url" for p in m.content):
            raise _Raised(f"{model} is not a multimodal model")


class MessagesRoutes(ChatRoutes):
    async def messages(self, request: Request) -> Response:
        received = asyncio.get_running_loop().time()
        try:
            req = validate(MessagesRequest, await self._body(request))
        except OpenAIError as e:
            return reply_error(e)
        try:
            chat = validate(ChatCompletionRequest, chat_request(req))
            self._check_model(chat.model)  # an unknown model's 404 comes first
            _text_only(chat, self.model_name)
            run = await self._start_chat(request, chat, received)
        except OpenAIError as e:
            return _anthropic_error(e)
        if run is None:
            return Response(status_code=499)
        if req.stream:
            return self._streaming(self._message_events(run), run.reqs)

        async def make() -> Response:
            return reply_json(message_body(await self._chat_whole(run)))

        return await self._run(request, run.reqs, make)

    async def _message_events(self, run: ChatRun) -> AsyncIterator[bytes]:
        """The chat stream (with usage) read back event by event, as vLLM converts its own."""
        events = MessageEvents(run.prompt_len)
        async for data in self._chat_stream(run, include_usage=True):
            out = b""
            for raw in data.split(b"\n\n"):
                if not raw.startswith(b"data: "):
                    continue
                payload = raw[6:]
                out += events.done() if payload == b"[DONE]" else events.chunk(orjson.loads(payload))
            if out:
                yield out

    async def count_tokens(self, request: Request) -> Response:
        try:
            req = validate(CountTokensRequest, await self._body(request))
        except OpenAIError as e:
            return reply_error(e)
        try:
            self._check_model(req.model)
            chat = validate(ChatCompletionRequest, chat_request(req))
        except OpenAIError as e:
            return _anthropic_error(e)
        messages = [m.model_dump(exclude_none=True) for m in chat.messages]
        tools = [t.model_dump(exclude_none=True) for t in chat.tools or ()]
        count = len(render_chat(self.tokenizer, messages, tools or None))
        return reply_json({"input_tokens": count, "context_management": {"original_input_tokens": count}})
