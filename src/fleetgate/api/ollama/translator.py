"""The Ollama routes as translators (api/translation.py). Errors are Ollama's `{"error": "..."}` with the
HTTP status; a stream that fails after it started ends with an `{"error": ...}` line, which the `ollama`
client raises."""

from __future__ import annotations

import time
from typing import Any

import orjson

from fleetgate.api.ollama.request import (
    chat_request,
    embed_request,
    generate_request,
    model_of,
    streamed,
)
from fleetgate.api.ollama.response import ChatLines, created_at, embed_body, whole
from fleetgate.api.translation import OpenAIRequest, UpstreamShape, error_parts

__all__ = ["ChatTranslator", "EmbedTranslator", "ErrorsTranslator", "GenerateTranslator", "error_body"]

JSON = b"application/json; charset=utf-8"
NDJSON = b"application/x-ndjson"
LATEST = ":latest"


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class ErrorsTranslator:
    """Answers left as they are, errors in Ollama's shape (the base of every Ollama route)."""

    answer_type = JSON
    stream_type = NDJSON

    def __init__(self) -> None:
        self.began = time.monotonic_ns()
        self.model = ""
        self.local: bytes | None = None

    def request(self, body: dict[str, Any]) -> OpenAIRequest:
        raise NotImplementedError

    def model_names(self, model: str) -> tuple[str, ...]:
        """`name:latest` is Ollama's spelling of a bare `name`."""
        return (model, model[: -len(LATEST)]) if model.endswith(LATEST) else (model,)

    def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        if status != 200:
            return status, error_body(error_parts(status, body)[0])
        if self.local is not None:
            return 200, body
        try:
            return 200, orjson.dumps(self.whole(orjson.loads(body)))
        except (orjson.JSONDecodeError, UpstreamShape, AttributeError) as e:
            return 502, error_body(f"the upstream answer could not be translated: {e}")

    def whole(self, openai: Any) -> Any:
        return openai

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return b""

    def failed(self, status: int, message: str, kind: str) -> bytes:
        return error_body(message) + b"\n"

    def done(self) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        return b""  # NDJSON has no comments: a waiting stream stays quiet


class ChatTranslator(ErrorsTranslator):
    """`/api/chat` (chat=True) and, as its subclass, `/api/generate`."""

    chat = True

    def __init__(self) -> None:
        super().__init__()
        self.lines: ChatLines | None = None

    def _loaded(self) -> bytes:
        """Ollama's answer to a request with nothing to generate: the model is loaded, nothing more."""
        key = "message" if self.chat else "response"
        value: Any = {"role": "assistant", "content": ""} if self.chat else ""
        body = {
            "model": self.model,
            "created_at": created_at(),
            key: value,
            "done": True,
            "done_reason": "load",
        }
        return orjson.dumps(body)

    def request(self, body: dict[str, Any]) -> OpenAIRequest:
        self.model = model_of(body)
        path, openai = self.translate(body)
        stream = streamed(body)
        if stream:
            openai["stream"] = True
            openai["stream_options"] = {"include_usage": True}
            self.lines = ChatLines(self.model, self.chat, self.began)
        if self.empty(body):
            self.local = self._loaded()
            return OpenAIRequest(path, openai, False, local=self.local)
        return OpenAIRequest(path, openai, stream)

    def translate(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "/v1/chat/completions", chat_request(body)

    def empty(self, body: dict[str, Any]) -> bool:
        return not body.get("messages")

    def whole(self, openai: Any) -> Any:
        return whole(openai, self.model, self.chat, self.began)

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if self.lines is None:
            self.lines = ChatLines(self.model, self.chat, self.began)
        return self.lines.chunk(chunk)

    def done(self) -> bytes:
        if self.lines is None:
            self.lines = ChatLines(self.model, self.chat, self.began)
        return self.lines.done()


class GenerateTranslator(ChatTranslator):
    chat = False

    def translate(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return generate_request(body)

    def empty(self, body: dict[str, Any]) -> bool:
        return not body.get("prompt")


class EmbedTranslator(ErrorsTranslator):
    """`/api/embed` and (legacy=True) `/api/embeddings`."""

    def __init__(self, legacy: bool = False) -> None:
        super().__init__()
        self.legacy = legacy

    def request(self, body: dict[str, Any]) -> OpenAIRequest:
        self.model = model_of(body)
        return OpenAIRequest("/v1/embeddings", embed_request(body, self.legacy), False)

    def whole(self, openai: Any) -> Any:
        return embed_body(openai, self.model, self.legacy, self.began)
