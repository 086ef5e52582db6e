"""Tool calls in model output: Hermes/Qwen `<tool_call>{json}</tool_call>` blocks, or a bare JSON call.

`parse` reads a finished output the way vLLM's `hermes` parser does; `ToolCallStream` turns output deltas
into the `tool_calls` deltas vLLM streams: one with the call's id, type and function name as soon as the name
is complete, then pieces of the arguments JSON as they arrive. A bare JSON output (`{"name": ...,
"arguments": ...}` or a list of them) is only recognisable whole, so it is held until the output ends.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fleetgate.protocol import random_id

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS = re.compile(r'\s*,\s*"(?:arguments|parameters)"\s*:\s*')


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return ToolCall(random_id("chatcmpl-tool-"), obj["name"], json.dumps(args, ensure_ascii=False))


def _json_calls(text: str) -> list[ToolCall] | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = obj if isinstance(obj, list) else [obj]
    calls = [_call(item) for item in items]
    return None if not calls or any(c is None for c in calls) else [c for c in calls if c is not None]


def parse(text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a finished output; an output whose calls do not parse is all content."""
    if OPEN in text:
        calls: list[ToolCall] = []
        for body in _BLOCK.findall(text):
            found = _json_calls(body.strip())
            if found is None:
                return text, []
            calls += found
        content = text[: text.index(OPEN)]
        return (content or None), calls
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        found = _json_calls(stripped)
        if found:
            return None, found
    return text, []


def value_end(text: str, start: int = 0) -> int | None:
    """Index just past the JSON value that starts at `start` (after whitespace), None while incomplete."""
    i = start
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    if i == len(text):
        return None
    if text[i] not in '{["':
        while i < len(text) and text[i] not in ",}] \t\r\n":
            i += 1
        return i if i < len(text) else None
    depth = 0
    in_string = escaped = False
    for j in range(i, len(text)):
        c = text[j]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                if depth == 0:
                    return j + 1
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


def _held_back(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


@dataclass(slots=True)
class _Open:
    index: int
    start: int  # where the call's JSON begins in the output text
    name_sent: bool = False
    args_at: int | None = None  # offset of the arguments value in the call's text
    args_sent: int = 0


class ToolCallStream:
    """Output text deltas in; chat deltas out as vLLM streams them: content, or tool_calls (content None)."""

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0  # output text consumed so far
        self.calls = 0
        self._open: _Open | None = None
        self._bare: bool | None = None  # does the output start as bare JSON? None until known

    @property
    def called(self) -> bool:
        return self.calls > 0

    def feed(self, delta: str) -> list[dict[str, Any]]:
        self.text += delta
        if self._bare is None and self.text.strip():
            self._bare = self.text.lstrip()[0] in "{["
        if self._bare:
            return []
        out: list[dict[str, Any]] = []
        while True:
            if self._open is not None:
                call = self._open
                end = self.text.find(CLOSE, call.start)
                out += self._advance(call, self.text[call.start : end if end >= 0 else None], end >= 0)
                if end < 0:
                    return out
                self._open = None
                self.pos = end + len(CLOSE)
                continue
            at = self.text.find(OPEN, self.pos)
            stop = at if at >= 0 else len(self.text) - _held_back(self.text[self.pos :], OPEN)
            piece = self.text[self.pos : stop]
            # The newlines models put between and after calls are layout, not an answer.
            if piece and not (self.calls and piece.isspace()):
                out.append({"content": piece})
            self.pos = max(self.pos, stop)
            if at < 0:
                return out
            self._open = _Open(self.calls, at + len(OPEN))
            self.calls += 1
            self.pos = self._open.start

    def finish(self) -> list[dict[str, Any]]:
        """Deltas still owed once the output has ended."""
        if self._bare:
            content, calls = parse(self.text)
            if not calls:
                return [{"content": content}] if content else []
            out: list[dict[str, Any]] = []
            for call in calls:
                out += self._whole(self.calls, call)
                self.calls += 1
            return out
        if self._open is not None:
            return self._advance(self._open, self.text[self._open.start :], True)
        rest = self.text[self.pos :]
        self.pos = len(self.text)
        return [{"content": rest}] if rest and not (self.calls and rest.isspace()) else []

    def _advance(self, call: _Open, text: str, complete: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not call.name_sent:
            m = _NAME.match(text)
            if m is None:
                if complete:
                    # Not the usual name-first layout: parse the whole call now.
                    found = _json_calls(text.strip()) or []
                    for c in found:
                        out += self._whole(call.index, c)
                    call.name_sent = True
                return out
            name = json.loads(f'"{m.group(1)}"')
            out.append(_name_delta(call.index, random_id("chatcmpl-tool-"), name))
            call.name_sent = True
            args = _ARGS.match(text, m.end())
            call.args_at = args.end() if args else None
        elif call.args_at is None:
            m = _NAME.match(text)
            args = _ARGS.match(text, m.end()) if m else None
            call.args_at = args.end() if args else None
        if call.args_at is None:
            return out
        end = value_end(text, call.args_at)
        value = text[call.args_at : end].lstrip() if end is not None else text[call.args_at :].lstrip()
        piece = value[call.args_sent :]
        if piece:
            out.append(_args_delta(call.index, piece))
            call.args_sent = len(value)
        return out

    @staticmethod
    def _whole(index: int, call: ToolCall) -> list[dict[str, Any]]:
        return [_name_delta(index, call.id, call.name), _args_delta(index, call.arguments)]


def _name_delta(index: int, call_id: str, name: str) -> dict[str, Any]:
    call = {"id": call_id, "type": "function", "index": index, "function": {"name": name}}
    return {"content": None, "tool_calls": [call]}


def _args_delta(index: int, piece: str) -> dict[str, Any]:
    return {"content": None, "tool_calls": [{"index": index, "function": {"arguments": piece}}]}
