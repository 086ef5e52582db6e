"""The two Anthropic routes as translators (api/translation.py): `/v1/messages` onto chat completions and
`/v1/messages/count_tokens` onto vLLM's `/tokenize`."""

from __future__ import annotations

from typing import Any

import orjson

from fleetgate.api.anthropic.errors import error_body
from fleetgate.api.anthropic.request import chat_messages, chat_tools, to_chat
from fleetgate.api.anthropic.response import message_of
from fleetgate.api.anthropic.stream import MessageStream, sse
from fleetgate.api.translation import OpenAIRequest, UpstreamShape, error_parts
from fleetgate.protocol import BadRequestError

__all__ = ["CountTokensTranslator", "ErrorsTranslator", "MessagesTranslator"]

JSON = b"application/json"
EVENTS = b"text/event-stream; charset=utf-8"


class ErrorsTranslator:
    """Answers left as they are, errors in Anthropic's shape (the base of both routes)."""

    answer_type = JSON
    stream_type = EVENTS

    def request(self, body: dict[str, Any]) -> OpenAIRequest:
        raise BadRequestError("this route takes no body")

    def model_names(self, model: str) -> tuple[str, ...]:
        return (model,)

    def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        if status != 200:
            return status, error_body(status, error_parts(status, body)[0])
        try:
            return 200, self.whole(body)
        except UpstreamShape as e:
            return 502, error_body(502, str(e))

    def whole(self, body: bytes) -> bytes:
        return body

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return b""

    def failed(self, status: int, message: str, kind: str) -> bytes:
        return MessageStream.failed(status, message)

    def done(self) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        return sse("ping", {})


class MessagesTranslator(ErrorsTranslator):
    def __init__(self) -> None:
        self.model = ""
        self.stops: list[str] = []
        self.stream: MessageStream | None = None

    def request(self, body: dict[str, Any]) -> OpenAIRequest:
        chat = to_chat(body)
        self.model = chat["model"]
        self.stops = list(chat.get("stop") or ())
        stream = bool(chat.get("stream"))
        if stream:
            self.stream = MessageStream(self.model, self.stops)
        return OpenAIRequest("/v1/chat/completions", chat, stream)

    def whole(self, body: bytes) -> bytes:
        try:
            chat = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamShape("the upstream answer is not JSON") from None
        return orjson.dumps(message_of(chat if isinstance(chat, dict) else {}, self.model, self.stops))

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if self.stream is None:
            self.stream = MessageStream(self.model, self.stops)
        return self.stream.chunk(chunk)

    def done(self) -> bytes:
        if self.stream is None:
            self.stream = MessageStream(self.model, self.stops)
        return self.stream.done()


class CountTokensTranslator(ErrorsTranslator):
    """`count_tokens` is the prompt the chat template makes of the messages, system prompt and tools, which
    is what vLLM's `/tokenize` counts."""

    def request(self, body: dict[str, Any]) -> OpenAIRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequestError("model: Field required", param="model")
        out: dict[str, Any] = {
            "model": model,
            "messages": chat_messages(body.get("system"), body.get("messages")),
            "add_generation_prompt": True,
        }
        tools = chat_tools(body.get("tools"))
        if tools:
            out["tools"] = tools
        return OpenAIRequest("/tokenize", out, False)

    def whole(self, body: bytes) -> bytes:
        try:
            count = orjson.loads(body).get("count")
        except (orjson.JSONDecodeError, AttributeError):
            count = None
        if not isinstance(count, int):
            raise UpstreamShape("the upstream's /tokenize answer has no count")
        return orjson.dumps({"input_tokens": count})
