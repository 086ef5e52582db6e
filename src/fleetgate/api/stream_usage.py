"""Usage for every stream: the gateway counts each stream's tokens, so a stream whose client did not ask for
usage asks for it upstream (`stream_options.include_usage`), and the usage event is not passed on."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["wants_usage_upstream", "with_usage_requested"]


def wants_usage_upstream(body: dict[str, Any]) -> bool:
    """The client did not ask for usage (options the engine will refuse are left for it to refuse)."""
    options = body.get("stream_options")
    if options is None:
        return True
    return isinstance(options, dict) and options.get("include_usage") is not True


def with_usage_requested(raw: bytes, body: dict[str, Any]) -> bytes:
    """The raw body with `stream_options.include_usage` set, without re-encoding the rest of it."""
    options = body.get("stream_options")
    if options is None and "stream_options" not in body:
        end = raw.rstrip()
        if end.endswith(b"}"):
            return end[:-1] + b',"stream_options":{"include_usage":true}}'
    given = options if isinstance(options, dict) else {}
    return orjson.dumps({**body, "stream_options": {**given, "include_usage": True}})
