"""Anthropic Messages bodies as vLLM 0.26 validates them, and the chat completions request vLLM makes of one.

vLLM serves `/v1/messages` on top of its chat completions: the body is checked by its own pydantic models
(a failure is FastAPI's validation error, which vLLM answers in OpenAI's shape like any other), then turned
into a chat request. The rules here follow vLLM's source (`vllm/entrypoints/anthropic/`), not Anthropic's
API: system text is joined without a separator, `tool_result` blocks of a user turn become `tool` messages
ahead of it, `tool_use` inputs become JSON arguments, `thinking` becomes the assistant's `reasoning`, tools
without a `tool_choice` are `auto`, and a stream asks for usage in every chunk.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import field_validator

from fleetgate.worker.requests import Body

__all__ = ["CountTokensRequest", "MessagesRequest", "chat_request"]

# Claude Code puts a per-request hash in a system block; vLLM drops it so it does not defeat prefix caching.
_BILLING_HEADER = "x-anthropic-billing-header"


class Block(Body):
    type: Literal[
        "text", "image", "tool_use", "tool_result", "tool_reference", "thinking", "redacted_thinking"
    ]
    text: str | None = None
    source: dict[str, Any] | None = None
    id: str | None = None
    tool_use_id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    content: str | list[dict[str, Any]] | None = None
    thinking: str | None = None


class Message(Body):
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class Tool(Body):
    name: str
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None


class _Base(Body):
    model: str
    messages: list[Message]
    system: str | list[Block] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value:
            raise ValueError("Model is required")
        return value


class CountTokensRequest(_Base):
    pass


class MessagesRequest(_Base):
    max_tokens: int
    stop_sequences: list[str] | None = None
    stream: bool | None = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    output_config: dict[str, Any] | None = None

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("max_tokens must be positive")
        return value


def chat_request(req: MessagesRequest | CountTokensRequest) -> dict[str, Any]:
    """The chat completions body vLLM builds for a Messages (or count_tokens) request."""
    out: dict[str, Any] = {"model": req.model, "messages": _messages(req)}
    if isinstance(req, MessagesRequest):
        # vLLM fills `max_completion_tokens` (its context-length error names that field: `err_too_long`).
        out.update(max_completion_tokens=req.max_tokens, stop=req.stop_sequences,
                   temperature=req.temperature, top_p=req.top_p, top_k=req.top_k)  # fmt: skip
        if req.stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        fmt = (req.output_config or {}).get("format")
        if isinstance(fmt, dict) and fmt.get("schema"):
            out["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "json_schema", "schema": fmt["schema"]},
            }
    choice = req.tool_choice
    if choice is not None:
        named = {"type": "function", "function": {"name": choice.name}}
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type, named)
    if req.tools is not None:
        out["tools"] = [
            {"type": "function",
             "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}
            for t in req.tools
        ]  # fmt: skip
        out.setdefault("tool_choice", "auto")
    return {k: v for k, v in out.items() if v is not None}


def _system_text(blocks: str | list[Block]) -> list[str]:
    if isinstance(blocks, str):
        return [blocks]
    return [b.text for b in blocks if b.type == "text" and b.text and not b.text.startswith(_BILLING_HEADER)]


def _messages(req: MessagesRequest | CountTokensRequest) -> list[dict[str, Any]]:
    system = _system_text(req.system) if req.system else []
    for m in req.messages:
        if m.role == "system":
            system += _system_text(m.content)
    out: list[dict[str, Any]] = [{"role": "system", "content": "".join(system)}] if system else []
    for m in req.messages:
        if m.role == "system":
            continue
        msg: dict[str, Any] = {"role": m.role}
        if isinstance(m.content, str):
            msg["content"] = m.content
        else:
            _blocks(m.role, m.content, msg, out)
        if m.role != "user" or "content" in msg:
            out.append(msg)
    return out


def _blocks(role: str, blocks: list[Block], msg: dict[str, Any], out: list[dict[str, Any]]) -> None:
    """One turn's blocks: its text and image parts, tool calls and reasoning on `msg`; a user turn's tool
    results appended to `out` right away (before the turn itself)."""
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for b in blocks:
        if b.type == "text" and b.text:
            parts.append({"type": "text", "text": b.text})
        elif b.type == "image" and b.source:
            parts.append({"type": "image_url", "image_url": {"url": _image_url(b.source)}})
        elif b.type == "thinking" and b.thinking is not None:
            reasoning.append(b.thinking)
        elif b.type == "tool_use":
            fn = {"name": b.name or "", "arguments": json.dumps(b.input or {})}
            calls.append({"id": b.id or "call_0", "type": "function", "function": fn})
        elif b.type == "tool_result" and role == "user":
            out.append(
                {"role": "tool", "tool_call_id": b.tool_use_id or "", "content": _result_text(b.content)}
            )
        elif b.type == "tool_result":
            parts.append({"type": "text", "text": f"Tool result: {b.content or ''}"})
    if reasoning:
        msg["reasoning"] = "".join(reasoning)
    if calls:
        msg["tool_calls"] = calls
    if len(parts) == 1 and parts[0]["type"] == "text":
        msg["content"] = parts[0]["text"]
    elif parts:
        msg["content"] = parts


def _image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "url":
        return str(source.get("url", ""))
    return f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"


def _result_text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        return "\n".join(str(i.get("text", "")) for i in content if i.get("type") == "text")
    return content or ""
