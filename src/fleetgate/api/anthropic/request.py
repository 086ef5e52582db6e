"""An Anthropic Messages request as a chat completions request.

Content blocks map one to one where chat completions has the same thing: text, images (base64 or URL),
`tool_use` (an assistant's `tool_calls`) and `tool_result` (a `tool` message, placed before the rest of its
user turn, since chat templates expect tool results right after the call). Structured outputs (a JSON schema
in `output_config.format`) become `response_format`. `thinking` blocks the client sends
back are dropped: the engine's template makes its own. Server tools (web search, code execution: a `type`
other than `custom`) run at Anthropic and cannot run here; they are left out (docs/gateway.md).
"""

from __future__ import annotations

from typing import Any

import orjson

from fleetgate.api.translation import expect
from fleetgate.protocol import BadRequestError, lax_bool

__all__ = ["chat_messages", "chat_tools", "to_chat"]

# Sampling fields with the same meaning on both sides.
_SAME = ("temperature", "top_p", "top_k")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body for a Messages body (checked as Anthropic checks it)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model: Field required", param="model")
    if body.get("max_tokens") is None:
        raise BadRequestError("max_tokens: Field required", param="max_tokens")
    out: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(body.get("system"), body.get("messages")),
        "max_tokens": body["max_tokens"],
    }
    for name in _SAME:
        if body.get(name) is not None:
            out[name] = body[name]
    stops = body.get("stop_sequences")
    if stops is not None:
        out["stop"] = [expect(s, str, "stop_sequences") for s in expect(stops, list, "stop_sequences")]
    tools = chat_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        out.update(_tool_choice(expect(choice, dict, "tool_choice"), bool(tools)))
    fmt = _output_format(body)
    if fmt is not None:
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    if lax_bool(body.get("stream"), "stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """Structured outputs: `output_config.format` (or the beta's top-level `output_format`) with a schema."""
    config = body.get("output_config")
    fmt = expect(config, dict, "output_config").get("format") if config is not None else None
    if fmt is None:
        fmt = body.get("output_format")
    if fmt is None:
        return None
    expect(fmt, dict, "output_config.format")
    if fmt.get("type") != "json_schema":
        raise BadRequestError(
            "output_config.format.type: only 'json_schema' is supported", param="output_config"
        )
    schema: dict[str, Any] = expect(fmt.get("schema"), dict, "output_config.format.schema")
    return schema


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in expect(tools, list, "tools") if tools is not None else ():
        expect(tool, dict, "tools")
        if tool.get("type") not in (None, "custom"):
            continue  # a server tool: it runs at Anthropic, not here
        name = expect(tool.get("name"), str, "tools.name")
        fn: dict[str, Any] = {"name": name, "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description") is not None:
            fn["description"] = expect(tool["description"], str, "tools.description")
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: dict[str, Any], has_tools: bool) -> dict[str, Any]:
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = expect(choice.get("name"), str, "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise BadRequestError(f"tool_choice.type: unknown value {kind!r}", param="tool_choice")
    if not has_tools:
        return {}  # a choice among no tools means nothing (Anthropic accepts it)
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


# Claude Code opens its system prompt with a block carrying a per-request hash: left in, every prompt would
# start anew, for the engine's prefix cache and prefix routing alike. vLLM's own /v1/messages drops it too.
BILLING_HEADER = "x-anthropic-billing-header"


def chat_messages(system: Any, messages: Any, joiner: str = "\n") -> list[dict[str, Any]]:
    """Chat messages for a system prompt and Messages turns; system blocks joined by `joiner`."""
    out: list[dict[str, Any]] = []
    if system is not None:
        blocks = _unbilled(expect(system, list, "system")) if not isinstance(system, str) else []
        text = system if isinstance(system, str) else _text_of(blocks, "system", joiner)
        if text:
            out.append({"role": "system", "content": text})
    if messages is None:
        raise BadRequestError("messages: Field required", param="messages")
    for i, m in enumerate(expect(messages, list, "messages")):
        expect(m, dict, f"messages.{i}")
        role = m.get("role")
        content = m.get("content")
        if role not in ("user", "assistant"):
            raise BadRequestError(f"messages.{i}.role: must be 'user' or 'assistant'", param="messages")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        blocks = expect(content, list, f"messages.{i}.content")
        if role == "assistant":
            out.append(_assistant(blocks, i))
        else:
            out += _user(blocks, i)
    return out


def _assistant(blocks: list[Any], i: int) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for b in blocks:
        kind = expect(b, dict, f"messages.{i}.content").get("type")
        if kind == "text":
            texts.append(expect(b.get("text"), str, f"messages.{i}.content.text"))
        elif kind == "tool_use":
            arguments = orjson.dumps(b.get("input") if b.get("input") is not None else {}).decode()
            name = expect(b.get("name"), str, f"messages.{i}.content.name")
            call_id = expect(b.get("id"), str, f"messages.{i}.content.id")
            calls.append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise BadRequestError(f"messages.{i}: an assistant block of type {kind!r} is not supported here")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _user(blocks: list[Any], i: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for b in blocks:
        kind = expect(b, dict, f"messages.{i}.content").get("type")
        if kind == "tool_result":
            call_id = expect(b.get("tool_use_id"), str, f"messages.{i}.content.tool_use_id")
            given = b.get("content")
            text = given if isinstance(given, str) else _text_of(given or [], f"messages.{i}.content")
            if b.get("is_error") is True:
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            parts.append(_part(b, i))
    out = results
    if parts:
        texts_only = all(p["type"] == "text" for p in parts)
        content: Any = "".join(p["text"] for p in parts) if texts_only else parts
        out.append({"role": "user", "content": content})
    return out


def _part(b: dict[str, Any], i: int) -> dict[str, Any]:
    kind = b.get("type")
    if kind == "text":
        return {"type": "text", "text": expect(b.get("text"), str, f"messages.{i}.content.text")}
    if kind == "image":
        source = expect(b.get("source"), dict, f"messages.{i}.content.source")
        if source.get("type") == "base64":
            media = expect(source.get("media_type"), str, f"messages.{i}.content.source.media_type")
            data = expect(source.get("data"), str, f"messages.{i}.content.source.data")
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
        if source.get("type") == "url":
            url = expect(source.get("url"), str, f"messages.{i}.content.source.url")
            return {"type": "image_url", "image_url": {"url": url}}
        raise BadRequestError(f"messages.{i}: image source {source.get('type')!r} is not supported here")
    raise BadRequestError(f"messages.{i}: a user block of type {kind!r} is not supported here")


def _unbilled(blocks: list[Any]) -> list[Any]:
    def billing(b: Any) -> bool:
        return isinstance(b, dict) and isinstance(b.get("text"), str) and b["text"].startswith(BILLING_HEADER)

    return [b for b in blocks if not billing(b)]


def _text_of(blocks: Any, name: str, joiner: str = "\n") -> str:
    """The text of a list of text blocks (a system prompt, a tool result)."""
    texts = []
    for b in expect(blocks, list, name):
        expect(b, dict, name)
        if b.get("type") == "text":
            texts.append(expect(b.get("text"), str, f"{name}.text"))
        elif b.get("type") != "image":
            raise BadRequestError(f"{name}: a block of type {b.get('type')!r} is not supported here")
    return joiner.join(texts)
