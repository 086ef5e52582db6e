"""Anthropic's usage, read from a passed-through answer, as the OpenAI usage object the accounting reads.

A whole message has `usage` at its top level. A stream reports it twice: `message_start` (the prompt's count;
vLLM puts it there, Anthropic too) and `message_delta` at the end (the output count, and on vLLM the prompt's
again); the later figure wins. Anthropic counts cached prompt tokens apart from `input_tokens`
(`cache_read_input_tokens`, `cache_creation_input_tokens`): the prompt is their sum, and the cache reads are
OpenAI's `cached_tokens`.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["AnthropicUsage", "openai_usage"]


def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and value > 0 else 0

    read = count("cache_read_input_tokens")
    prompt = count("input_tokens") + read + count("cache_creation_input_tokens")
    output = count("output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read} if read else None,
    }


class AnthropicUsage:
    """The relay's `UsageShape` for Anthropic answers."""

    def whole(self, body: bytes) -> dict[str, Any] | None:
        try:
            usage = orjson.loads(body).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return openai_usage(usage) if isinstance(usage, dict) else None

    def stream(self, first: bytes, last: bytes) -> dict[str, Any] | None:
        merged: dict[str, Any] = {}
        for events in (first, last):  # the same chunk twice (a short answer) merges to the same
            for event in events.split(b"\n\n"):
                if b'"usage"' in event:
                    merged.update(_usage_of(event))
        return openai_usage(merged) if merged else None


def _usage_of(event: bytes) -> dict[str, Any]:
    """The usage an event reports (a message_start's message's, a message_delta's own)."""
    data = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(doc, dict):
        return {}
    holder = doc.get("message") if doc.get("type") == "message_start" else doc
    usage = holder.get("usage") if isinstance(holder, dict) else None
    return {k: v for k, v in usage.items() if v is not None} if isinstance(usage, dict) else {}
