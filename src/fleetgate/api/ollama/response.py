"""OpenAI answers as Ollama's: chat and generate bodies, their NDJSON streams, embeddings.

Ollama reports durations in nanoseconds; the gateway knows the whole request's time (from the translator's
creation to the answer), not how it split between loading, prompt and generation, so `total_duration` is the
measured time and `eval_duration` is that time too (a client's tokens/s from it is a lower bound).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["ChatLines", "created_at", "embed_body", "final_fields", "tool_calls"]


def created_at() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _arguments(given: Any) -> Any:
    if isinstance(given, dict):
        return given
    try:
        value = orjson.loads(given or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"arguments": given}
    return value if isinstance(value, dict) else {"value": value}


def tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as JSON text) as Ollama's (arguments as an object)."""
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function") or {}
        out.append(
            {
                "function": {
                    "index": i,
                    "name": fn.get("name", ""),
                    "arguments": _arguments(fn.get("arguments")),
                }
            }
        )
    return out


def final_fields(finish: Any, usage: dict[str, Any] | None, began: int) -> dict[str, Any]:
    """The counts and reason every finished Ollama answer ends with."""
    spent = max(1, time.monotonic_ns() - began)
    usage = usage or {}
    return {
        "done": True,
        "done_reason": "length" if finish == "length" else "stop",
        "total_duration": spent,
        "load_duration": 0,
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
        "prompt_eval_duration": 0,
        "eval_count": int(usage.get("completion_tokens") or 0),
        "eval_duration": spent,
    }


def whole(openai: dict[str, Any], model: str, chat: bool, began: int) -> dict[str, Any]:
    """A chat completion (or completion, for a raw generate) as an `/api/chat` or `/api/generate` body."""
    choices = openai.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    text = msg.get("content") if "message" in choice else choice.get("text")
    thinking = msg.get("reasoning_content") or msg.get("reasoning")
    out: dict[str, Any] = {"model": model, "created_at": created_at()}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text or ""}
        if thinking:
            message["thinking"] = thinking
        if msg.get("tool_calls"):
            message["tool_calls"] = tool_calls(msg["tool_calls"])
        out["message"] = message
    else:
        out["response"] = text or ""
        if thinking:
            out["thinking"] = thinking
    return out | final_fields(choice.get("finish_reason"), openai.get("usage"), began)


def embed_body(openai: dict[str, Any], model: str, legacy: bool, began: int) -> dict[str, Any]:
    vectors = [d.get("embedding") for d in openai.get("data") or () if isinstance(d, dict)]
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    usage = openai.get("usage") or {}
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": max(1, time.monotonic_ns() - began),
        "load_duration": 0,
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
    }


class ChatLines:
    """A chat completion stream as Ollama's NDJSON lines, one per chunk that carries text. Tool calls are
    sent whole once the call is complete, as Ollama sends them."""

    def __init__(self, model: str, chat: bool, began: int) -> None:
        self.model = model
        self.chat = chat
        self.began = began
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: Any = None
        self.usage: dict[str, Any] | None = None

    def _line(
        self, text: str, thinking: str = "", calls: list[dict[str, Any]] | None = None, **end: Any
    ) -> bytes:
        out: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out.update(end or {"done": False})
        return orjson.dumps(out) + b"\n"

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") if "delta" in choice else choice.get("text")
            thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
            if text or thinking:
                out.append(self._line(text or "", thinking if isinstance(thinking, str) else ""))
            for call in delta.get("tool_calls") or ():
                held = self.calls.setdefault(
                    call.get("index", 0), {"function": {"name": "", "arguments": ""}}
                )
                fn = call.get("function") or {}
                held["function"]["name"] += fn.get("name") or ""
                held["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
                if self.calls:
                    calls = tool_calls([self.calls[k] for k in sorted(self.calls)])
                    out.append(self._line("", calls=calls))
        return b"".join(out)

    def done(self) -> bytes:
        return self._line("", **final_fields(self.finish, self.usage, self.began))
