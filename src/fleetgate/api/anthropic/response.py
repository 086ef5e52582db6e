"""A chat completion as an Anthropic message: content blocks, stop reason, usage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from fleetgate.protocol import random_id

__all__ = ["message_id", "message_of", "stop_reason", "tool_id", "tool_input"]


def message_id(chat_id: Any) -> str:
    """Anthropic's `msg_` id, keeping the upstream id's unique part (so logs can be matched)."""
    text = str(chat_id or "")
    return "msg_" + (text.split("-", 1)[1] if "-" in text else text or "fleetgate")


def stop_reason(finish: Any, matched: Any, stops: Sequence[str], tool_used: bool) -> tuple[str, str | None]:
    """Anthropic's stop reason and sequence from OpenAI's finish reason and vLLM's `stop_reason` (the stop
    string that ended the text, when one did)."""
    if finish == "length":  # a call cut short included: its input is incomplete
        return "max_tokens", None
    if tool_used or finish == "tool_calls":
        return "tool_use", None
    if isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return "end_turn", None


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments (a JSON string) as the object Anthropic's `input` is."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"arguments": arguments}  # a model's broken JSON, kept for the client to see
    return value if isinstance(value, dict) else {"value": value}


def message_of(chat: dict[str, Any], model: str, stops: Sequence[str]) -> dict[str, Any]:
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = msg.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = msg.get("tool_calls") or []
    for call in calls:
        fn = call.get("function") or {}
        content.append(
            {"type": "tool_use", "id": tool_id(call.get("id")), "name": fn.get("name", ""),
             "input": tool_input(fn.get("arguments"))}
        )  # fmt: skip
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), stops, bool(calls))
    usage = chat.get("usage") or {}
    return {
        "id": message_id(chat.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
        },
    }


def tool_id(given: Any) -> str:
    # Clients send the id back in their tool_result, which becomes the tool message's tool_call_id: kept.
    return str(given) if given else random_id("toolu_")
