"""Answers the simulator must give in a set shape: tool calls (Hermes format) and JSON output.

Where vLLM's random-weight model fills a constrained answer with whitespace until `max_tokens`, the simulator
completes it: arguments valid against the tool's schema, JSON valid against `response_format`. The answer
becomes a script of token ids the engine emits one per step, and `ToolStream` maps each emitted token to the
delta vLLM's Hermes parser would stream for it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fleetgate.protocol import BadRequestError, random_id
from fleetgate.sim.jsongen import generate, malformed
from fleetgate.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class Script:
    tokens: tuple[int, ...]
    # The text of each token: the answer must read as built even where a piece shares its id with another.
    pieces: tuple[str, ...]
    # For a tool call: tokens [0, head) are `<tool_call>{"name": ..., "arguments": `, [head, head+args) the
    # arguments JSON, the rest the closing markup; the name is complete after token `named`.
    tool_name: str | None = None
    call_id: str = ""
    named: int = 0
    head: int = 0
    args: int = 0
    arguments: str = ""


def _schema_of(response_format: Mapping[str, Any]) -> Any:
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        return spec.get("schema", {}) if isinstance(spec, Mapping) else {}
    return {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def _compiled(schema: Any, param: str) -> Any:
    """The schema a constrained answer follows; a 400, as vLLM's grammar backend gives, when it is no JSON
    Schema (only schemas vLLM compiles are checked: the chosen tool's, response_format's)."""
    where = malformed(schema)
    if where is not None:
        raise BadRequestError(
            f"Invalid JSON schema: `{where}` does not follow the JSON Schema metaschema", param=param
        )
    return schema


def json_script(
    tokenizer: Tokenizer, response_format: Mapping[str, Any], rng: random.Random
) -> Script | None:
    if response_format.get("type") not in ("json_schema", "json_object"):
        return None
    text = orjson.dumps(generate(_compiled(_schema_of(response_format), "response_format"), rng)).decode()
    pieces = tokenizer.pieces(text)
    return Script(_ids(tokenizer, pieces), pieces)


def _ids(tokenizer: Tokenizer, pieces: Sequence[str]) -> tuple[int, ...]:
    return tuple(tokenizer.piece_id(p) for p in pieces)


def pick_tool(
    tools: Sequence[Mapping[str, Any]], mode: str | None, named: str | None, last_role: str | None
) -> Mapping[str, Any] | None:
    """Which tool a travel-assistant-like model would call now, or None for a text answer.

    `mode` is tool_choice "none" / "auto" / "required" (None: auto), `named` a forced function's name.
    """
    if not tools or mode == "none":
        return None
    if named is not None:
        return next((t for t in tools if t["function"]["name"] == named), None)
    if mode != "required" and last_role == "tool":
        return None  # with a tool's result in hand the model answers in text
    if mode != "required" and malformed(tools[0]["function"].get("parameters") or {}) is not None:
        return None  # vLLM constrains only a forced choice: unconstrained, the model may answer in text
    return tools[0]


def tool_script(tokenizer: Tokenizer, tool: Mapping[str, Any], rng: random.Random) -> Script:
    fn = tool["function"]
    name = str(fn["name"])
    schema = _compiled(fn.get("parameters") or {"type": "object"}, "tools")
    arguments = orjson.dumps(generate(schema, rng)).decode()
    # Hermes streaming names the tool as soon as `"name": "..."` is complete, before the arguments start.
    named = tokenizer.pieces(f'<tool_call>\n{{"name": "{name}"')
    head = (*named, *tokenizer.pieces(', "arguments": '))
    args = tokenizer.pieces(arguments)
    pieces = (*head, *args, *tokenizer.pieces("}\n</tool_call>"))
    return Script(
        tokens=_ids(tokenizer, pieces),
        pieces=pieces,
        tool_name=name,
        call_id=random_id("chatcmpl-tool-"),
        named=len(named),
        head=len(head),
        args=len(args),
        arguments=arguments,
    )


class ToolStream:
    """Turns the tokens of a tool-call script into vLLM's streamed `tool_calls` deltas."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.index = 0

    @property
    def called(self) -> bool:
        """Whether the call's head (its id and name) has been streamed."""
        return self.index >= self.script.named

    def delta(self) -> dict[str, Any] | None:
        """The delta of the script's next token, if it streams one."""
        s = self.script
        i = self.index
        self.index += 1
        if i == s.named - 1:
            call = {"id": s.call_id, "type": "function", "index": 0, "function": {"name": s.tool_name}}
            return {"content": None, "tool_calls": [call]}
        if s.head <= i < s.head + s.args:
            piece = s.pieces[i]
            return {"content": None, "tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        return None
