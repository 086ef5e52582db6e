"""Constrained decoding with llguidance: `response_format` and forced tool calls as grammars over tokens.

llguidance is the Guidance project's engine (Microsoft), also a structured-output backend of vLLM and
SGLang: a Rust wheel with no dependencies that installs from PyPI on any CPU, builds a JSON-schema or Lark
grammar in milliseconds and computes a token mask in tens of microseconds without compiling anything for
the vocabulary first. Lark with embedded `%json` schemas expresses a Hermes tool call (fixed markup, a choice
of function names, each with its own argument schema) in one grammar.

JSON is written compactly with json.dumps' separators, and objects admit no properties beyond those their
schema names unless it says otherwise (xgrammar's strict mode, vLLM's default backend): a model, above all a
random one, cannot then fill its budget with whitespace or invented keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from llguidance import LLMatcher, LLTokenizer
from llguidance.hf import from_tokenizer

from fleetgate.protocol import BadRequestError

_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_BITS = torch.arange(32, dtype=torch.int32)


def strict(schema: Any) -> Any:
    """The schema with additionalProperties false on every object that lists properties and says nothing."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {k: strict(v) for k, v in schema.items() if k not in ("properties", "$defs", "definitions")}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), Mapping):
            out[key] = {name: strict(s) for name, s in schema[key].items()}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _styled(schema: Any) -> dict[str, Any]:
    base = strict(schema) if isinstance(schema, Mapping) else {}
    return {**base, "x-guidance": _JSON_STYLE}


def _lark_string(text: str) -> str:
    return json.dumps(text)


class Grammars:
    """Builds grammars for one tokenizer and hands out matchers; validation errors become 400s."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]) -> None:
        self.tokenizer: LLTokenizer = from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(eos_ids))
        self.vocab_size = vocab_size
        self._markup = {tag: self._token_or_text(tag) for tag in ("<tool_call>", "</tool_call>")}

    def _token_or_text(self, tag: str) -> str:
        """`<[id]>` when the tokenizer has the tag as one added token (Qwen2.5, Hermes), else the literal
        text: llguidance treats such tokens as special, and a grammar must name them by id."""
        ids = self.tokenizer.tokenize_str(tag)
        if len(ids) == 1 and self.tokenizer.is_special_token(ids[0]):
            return f"<[{ids[0]}]>"
        return _lark_string(tag)

    def response_format(self, response_format: Mapping[str, Any]) -> str | None:
        kind = response_format.get("type")
        if kind == "json_object":
            return LLMatcher.grammar_from_json_schema(_styled({"type": "object"}))
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            if not isinstance(schema, Mapping):
                raise BadRequestError("response_format.json_schema.schema must be a JSON Schema object")
            return LLMatcher.grammar_from_json_schema(_styled(schema))
        if kind in (None, "text"):
            return None
        raise BadRequestError(f"response_format type {kind!r} is not supported", param="response_format")

    def tool_calls(self, tools: Sequence[Mapping[str, Any]], several: bool) -> str:
        """Hermes calls, `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one or several."""
        rules = []
        for i, tool in enumerate(tools):
            fn = tool["function"]
            head = '{"name": ' + json.dumps(fn["name"]) + ', "arguments": '
            rules.append(f'call_{i}: {_lark_string(head)} args_{i} "}}"')
            rules.append(f"args_{i}: %json {json.dumps(_styled(fn.get('parameters') or {'type': 'object'}))}")
        block = f'{self._markup["<tool_call>"]} "\\n" call "\\n" {self._markup["</tool_call>"]}'
        start = 'start: block ("\\n" block)*' if several else "start: block"
        calls = " | ".join(f"call_{i}" for i in range(len(tools)))
        return "\n".join([start, f"block: {block}", f"call: {calls}", *rules])

    def matcher(self, grammar: str) -> LLMatcher:
        # The constructor compiles the grammar and never raises: a bad one leaves the matcher in error.
        matcher = LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise BadRequestError(f"invalid grammar for structured output: {matcher.get_error()}")
        return matcher


class Masks:
    """Allowed-token masks, one bit per token as llguidance computes them, unpacked to bools."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        # llguidance.torch has the same helpers, but importing it compiles a kernel with torch.compile.
        self.bitmask = torch.zeros(-(-vocab_size // 32), dtype=torch.int32)

    def allowed(self, matcher: LLMatcher) -> torch.Tensor:
        """Bool mask [vocab_size] of the tokens `matcher` allows next."""
        matcher.unsafe_compute_mask_ptr(self.bitmask.data_ptr(), self.bitmask.numel() * 4)
        bits = (self.bitmask.unsqueeze(1) >> _BITS) & 1
        return bits.reshape(-1)[: self.vocab_size].bool()
