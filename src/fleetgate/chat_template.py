"""A model's own chat template, applied the way vLLM applies it: messages normalised, the template rendered to
text, the text tokenized without adding special tokens. Shared by the embedded engine (which serves with it)
and the gateway's prefix routing (whose block keys must equal the engine's), so the two cannot drift.

`tokenizer` is a transformers tokenizer; this module imports nothing heavy itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render_ids", "template_message"]


def template_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it: no null fields, text content as one string, tool-call
    arguments as objects (a template that wants a string still gets one when they are not JSON)."""
    d = {k: v for k, v in message.items() if v is not None}
    content = d.get("content")
    if isinstance(content, list):
        d["content"] = "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type", "text") == "text"
        )
    calls = d.get("tool_calls")
    if isinstance(calls, list):
        d["tool_calls"] = [dict(c) if isinstance(c, Mapping) else c for c in calls]
        for call in d["tool_calls"]:
            if isinstance(call, dict) and isinstance(call.get("function"), Mapping):
                fn = call["function"] = dict(call["function"])
                with contextlib.suppress(json.JSONDecodeError, TypeError):
                    fn["arguments"] = json.loads(fn.get("arguments") or "{}")
    return d


def render_ids(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of the conversation; raises jinja2's TemplateError when the template refuses it."""
    text = tokenizer.apply_chat_template(
        list(messages), tools=list(tools) if tools else None, add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )  # fmt: skip
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids
