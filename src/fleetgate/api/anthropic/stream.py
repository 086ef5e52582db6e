"""Chat completion chunks as Anthropic's stream events, one chunk at a time.

`message_start` goes out with the first chunk; each text, thinking or tool call becomes a content block
(`content_block_start`, deltas, `content_block_stop`) as its first delta arrives. OpenAI sends the finish
reason and then, in its own chunk, the usage: `message_delta` (stop reason and usage) and `message_stop`
follow `[DONE]`, once both are known. The input token count is known only then too, so `message_start`
carries 0 and `message_delta` the real counts (the SDKs take the later figure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from fleetgate.api.anthropic.errors import error_type
from fleetgate.api.anthropic.response import message_id, stop_reason, tool_id

__all__ = ["MessageStream", "sse"]


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class MessageStream:
    def __init__(self, model: str, stops: Sequence[str]) -> None:
        self.model = model
        self.stops = stops
        self.started = False
        self.index = -1  # of the open content block
        self.open: str | None = None  # its kind: "text", "thinking", "tool_use"
        self.tools: dict[int, int] = {}  # OpenAI tool call index -> block index
        self.finish: Any = None
        self.matched: Any = None
        self.usage: dict[str, Any] = {}

    def _start(self, chat_id: Any) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": message_id(chat_id), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }  # fmt: skip
        return sse("message_start", {"message": message})

    def _block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open = kind
        return out + sse("content_block_start", {"index": self.index, "content_block": block})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return sse("content_block_stop", {"index": self.index})

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = [] if self.started else [self._start(chunk.get("id"))]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thinking, str) and thinking:
                if self.open != "thinking":
                    out.append(self._block("thinking", {"type": "thinking", "thinking": "", "signature": ""}))
                body = {"type": "thinking_delta", "thinking": thinking}
                out.append(sse("content_block_delta", {"index": self.index, "delta": body}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open != "text":
                    out.append(self._block("text", {"type": "text", "text": ""}))
                body = {"type": "text_delta", "text": text}
                out.append(sse("content_block_delta", {"index": self.index, "delta": body}))
            for call in delta.get("tool_calls") or ():
                out.append(self._tool(call))
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
                self.matched = choice.get("stop_reason")
        return b"".join(out)

    def _tool(self, call: dict[str, Any]) -> bytes:
        out = b""
        at = call.get("index", 0)
        fn = call.get("function") or {}
        if at not in self.tools:
            block = {
                "type": "tool_use",
                "id": tool_id(call.get("id")),
                "name": fn.get("name", ""),
                "input": {},
            }
            out = self._block("tool_use", block)
            self.tools[at] = self.index
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            body = {"type": "input_json_delta", "partial_json": arguments}
            out += sse("content_block_delta", {"index": self.tools[at], "delta": body})
        return out

    def done(self) -> bytes:
        out = [] if self.started else [self._start(None)]
        out.append(self._close())
        reason, sequence = stop_reason(self.finish, self.matched, self.stops, bool(self.tools))
        usage = {
            "input_tokens": int(self.usage.get("prompt_tokens") or 0),
            "output_tokens": int(self.usage.get("completion_tokens") or 0),
        }
        out.append(
            sse(
                "message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
            )
        )
        out.append(sse("message_stop", {}))
        return b"".join(out)

    @staticmethod
    def failed(status: int, message: str) -> bytes:
        return sse("error", {"error": {"type": error_type(status), "message": message}})
