"""A chat completion as vLLM 0.26's `/v1/messages` answers it: the whole message, or its stream events.

Written from vLLM's source (`vllm/entrypoints/anthropic/serving.py`), then checked against what a real vLLM
0.26.0 answered (tests/data/messages_contract.json, recorded 2026-12-06 on an H100; replayed by
tests/test_sim_messages_contract.py). What a client sees of vLLM here, and Anthropic's API does differently:
- the message id is the chat completion's (`chatcmpl-...`), a tool call's `chatcmpl-tool-...`;
- `stop_reason` comes from the finish reason alone (`stop` -> `end_turn`, `length` -> `max_tokens`,
  `tool_calls` -> `tool_use`): a stop sequence ends the turn as `end_turn`, and `stop_sequence` is never set;
- events are dumped without most fields left at their defaults: `message_delta`'s delta has only its
  `stop_reason`, a whole message no `stop_sequence`; but `message_start`'s message keeps `type` and `role`
  (reading the source had suggested otherwise; the recording shows both);
- `message_start` carries the prompt's token count, `message_delta` both counts; no `ping` events;
- the stream ends with `message_stop`, never `[DONE]`.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

__all__ = ["MessageEvents", "error_body", "message_body"]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def error_body(kind: str, message: str) -> bytes:
    """vLLM's Anthropic error: the OpenAI error's type (`NotFoundError`, `BadRequestError`) kept as is."""
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def message_body(chat: dict[str, Any]) -> dict[str, Any]:
    """A whole chat completion body as the Messages answer (fields that are null left out, as vLLM does)."""
    choice = chat["choices"][0]
    msg = choice["message"]
    content: list[dict[str, Any]] = []
    if msg.get("reasoning"):
        content.append({"type": "thinking", "thinking": msg["reasoning"], "signature": uuid.uuid4().hex})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or ():
        fn = call["function"]
        content.append(
            {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": orjson.loads(fn["arguments"])}
        )
    usage = chat["usage"]
    out = {
        "id": chat["id"],
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": chat["model"],
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason")),
        "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]},
    }
    return {k: v for k, v in out.items() if v is not None}


class MessageEvents:
    """Chat completion chunks (with usage asked for) in, Messages stream events out, one chunk at a time."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.started = False
        self.finish: str | None = None
        self.next_index = 0  # of the next content block
        self.open: str | None = None  # the open block's type
        self.tool: str | None = None  # the open tool_use block's call id
        self.tool_ids: dict[int, str] = {}  # chat tool call index -> call id

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if not self.started:
            # vLLM makes message_start of the first chunk (the role chunk) and nothing else of it.
            self.started = True
            usage = {"input_tokens": self.prompt_tokens, "output_tokens": 0}
            message = {"id": chunk["id"], "type": "message", "role": "assistant", "content": [],
                       "model": chunk["model"], "stop_reason": None, "stop_sequence": None,
                       "usage": usage}  # fmt: skip
            return event("message_start", {"message": message})
        if not chunk["choices"]:  # the usage chunk: the message's end
            usage = chunk.get("usage") or {}
            counts = {"input_tokens": usage.get("prompt_tokens", 0),
                      "output_tokens": usage.get("completion_tokens", 0)}  # fmt: skip
            ending = {"stop_reason": STOP_REASONS.get(self.finish or "stop")}
            return self._close() + event("message_delta", {"delta": ending, "usage": counts})
        choice = chunk["choices"][0]
        if choice.get("finish_reason") is not None:
            self.finish = choice["finish_reason"]
        delta: dict[str, Any] = choice.get("delta") or {}
        out = b""
        if delta.get("content"):
            if self.open != "text":
                out += self._start({"type": "text", "text": ""})
            body = {"type": "text_delta", "text": delta["content"]}
            out += event("content_block_delta", {"delta": body, "index": self.next_index})
        for call in delta.get("tool_calls") or ():
            out += self._tool(call)
        return out

    def _tool(self, call: dict[str, Any]) -> bytes:
        fn = call.get("function") or {}
        out = b""
        cid = call.get("id")
        if cid is not None:
            self.tool_ids[call.get("index", 0)] = cid
            if cid != self.tool and fn.get("name") is not None:
                out += self._start({"type": "tool_use", "id": cid, "name": fn["name"], "input": {}})
                self.tool = cid
        else:
            cid = self.tool_ids.get(call.get("index", 0))
        if fn.get("arguments") and cid is not None and cid == self.tool:
            body = {"type": "input_json_delta", "partial_json": fn["arguments"]}
            out += event("content_block_delta", {"delta": body, "index": self.next_index})
        return out

    def _start(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.open = block["type"]
        return out + event("content_block_start", {"content_block": block, "index": self.next_index})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        out = event("content_block_stop", {"index": self.next_index})
        self.open, self.tool = None, None
        self.next_index += 1
        return out

    def done(self) -> bytes:
        return event("message_stop", {})
