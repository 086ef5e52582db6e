"""A fast deterministic tokenizer with realistic token counts, and the chat template it renders.

Stands in for a model's BPE tokenizer wherever no tokenizer.json is at hand (the simulator, approximate
prefix hashing, workload generation). It aims at the counts a Llama-3-class tokenizer gives, not its ids:
about 4 characters per token for English prose and 1 to 1.5 for Chinese. Ids are stable across processes
(crc32, not Python's salted str hash) so that two simulators, or a gateway and a simulator, agree on the
tokens of a text and so on its prefix-cache block hashes.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import orjson

ENDOFTEXT = 0
IM_START = 1
IM_END = 2
FIRST_ORDINARY_ID = 256

# Pieces the way GPT-style pre-tokenizers cut text: CJK characters one by one, words with their leading space,
# short digit runs, whitespace runs, punctuation runs.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f"
_PIECE = re.compile(
    rf"[{_CJK}]+|[ ]?[^\W\d_{_CJK}]+|[ ]?\d{{1,3}}|\s*\n|[ \t]+(?!\S)|[ \t]+|[ ]?[^\s\w{_CJK}]+|_+|\s+|.",
    re.DOTALL,
)
_WORD_HEAD = 6  # a word piece up to this long (leading space included) is one token
_WORD_TAIL = 5  # longer words split into further tokens of this many characters
_PUNCT_RUN = 2
_SPACE_RUN = 4


def _cjk_split(run: str) -> Iterable[str]:
    # Common character pairs are single tokens in real vocabularies; a hash decides which pairs merge so the
    # split is stable and averages about 1.25 characters per token.
    i = 0
    n = len(run)
    while i < n:
        if i + 1 < n and zlib.crc32(run[i : i + 2].encode()) % 4 == 0:
            yield run[i : i + 2]
            i += 2
        else:
            yield run[i]
            i += 1


def _split(piece: str) -> Iterable[str]:
    first = piece[0]
    if first >= "\u3000" and not first.isspace() and _is_cjk(first):
        yield from _cjk_split(piece)
    elif first.isalpha() or (first == " " and len(piece) > 1 and piece[1].isalpha()):
        yield piece[:_WORD_HEAD]
        for i in range(_WORD_HEAD, len(piece), _WORD_TAIL):
            yield piece[i : i + _WORD_TAIL]
    elif piece.isspace():
        for i in range(0, len(piece), _SPACE_RUN):
            yield piece[i : i + _SPACE_RUN]
    elif len(piece) <= _PUNCT_RUN:
        yield piece
    else:
        for i in range(0, len(piece), _PUNCT_RUN):
            yield piece[i : i + _PUNCT_RUN]


@lru_cache(maxsize=256)
def _is_cjk(ch: str) -> bool:
    return re.fullmatch(f"[{_CJK}]", ch) is not None


class Tokenizer:
    """Text <-> ids with realistic counts; ids below FIRST_ORDINARY_ID are special tokens."""

    def __init__(self, vocab_size: int = 128256) -> None:
        if vocab_size <= FIRST_ORDINARY_ID * 2:
            raise ValueError(f"vocab_size must exceed {FIRST_ORDINARY_ID * 2}")
        self.vocab_size = vocab_size
        self._span = vocab_size - FIRST_ORDINARY_ID
        self._text_of: dict[int, str] = {ENDOFTEXT: "", IM_START: "<|im_start|>", IM_END: "<|im_end|>"}
        self.encode = lru_cache(maxsize=8192)(self._encode)

    def piece_id(self, piece: str) -> int:
        token = FIRST_ORDINARY_ID + zlib.crc32(piece.encode()) % self._span
        self._text_of.setdefault(token, piece)
        return token

    def pieces(self, text: str) -> tuple[str, ...]:
        """The text of each token `encode` gives: ids alone cannot always give it back, since two pieces
        may hash to one id, and the first seen keeps it for `decode`."""
        return tuple(part for piece in _PIECE.findall(text) for part in _split(piece))

    def _encode(self, text: str) -> tuple[int, ...]:
        pid = self.piece_id
        return tuple(pid(part) for part in self.pieces(text))

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids this tokenizer produced; ids it never produced decode to a placeholder like vLLM's."""
        text_of = self._text_of
        return "".join(text_of.get(i) or f"<r{i}>" for i in ids)

    def token_text(self, token: int) -> str:
        return self._text_of.get(token) or f"<r{token}>"


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping) and "text" in part
        )
    return str(content)


def _tools_preamble(tools: Sequence[Mapping[str, Any]]) -> str:
    # Hermes/Qwen-style: the tool signatures go into the system turn, which is what makes tool prompts long.
    sigs = "\n".join(orjson.dumps(t).decode() for t in tools)
    return (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{sigs}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def _message_text(message: Mapping[str, Any]) -> str:
    text = _content_text(message.get("content"))
    for call in message.get("tool_calls") or ():
        fn = call.get("function", {}) if isinstance(call, Mapping) else {}
        text += (
            f'\n<tool_call>\n{{"name": "{fn.get("name", "")}", "arguments": {fn.get("arguments", "{}")}}}'
            "\n</tool_call>"
        )
    if message.get("role") == "tool":
        text = f"<tool_response>\n{text}\n</tool_response>"
    return text


def chat_turns(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
) -> list[tuple[str, str]]:
    """(role, text) of each turn as the template renders it: tool signatures go into the system turn (one is
    added when the conversation has none), tool results are user turns."""
    roles = [str(m.get("role", "user")) for m in messages]
    texts = [_message_text(m) for m in messages]
    if tools:
        if roles and roles[0] == "system":
            texts[0] += _tools_preamble(tools)
        else:
            roles.insert(0, "system")
            texts.insert(0, "You are a helpful assistant." + _tools_preamble(tools))
    return [(role if role != "tool" else "user", text) for role, text in zip(roles, texts, strict=True)]


def turn_ids(tokenizer: Tokenizer, role: str, text: str) -> list[int]:
    """One ChatML turn: `<|im_start|>role\ntext<|im_end|>\n`."""
    newline = tokenizer.encode("\n")
    return [IM_START, *tokenizer.encode(role), *newline, *tokenizer.encode(text), IM_END, *newline]


def generation_prompt_ids(tokenizer: Tokenizer) -> list[int]:
    return [IM_START, *tokenizer.encode("assistant"), *tokenizer.encode("\n")]


def render_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of a ChatML rendering: `<|im_start|>role\ncontent<|im_end|>\n` per message.

    Each message is tokenized on its own, as the special tokens around it make a real BPE do, so a shared
    system prompt or conversation prefix always yields the same leading ids (what prefix caching keys on).
    """
    ids: list[int] = []
    for role, text in chat_turns(messages, tools):
        ids += turn_ids(tokenizer, role, text)
    if add_generation_prompt:
        ids += generation_prompt_ids(tokenizer)
    return ids


# Words a generated answer is drawn from, most frequent first (Zipf weights), so output reads like text,
# detokenizes to about 4-5 characters per token, and common stop strings (" the", ".") really occur.
_OUTPUT_TEXT = (
    "the , . of and to a in is for that on with as it you are be this by from at your or can we day "
    "will an have not more all one two trip city time first best also travel hotel visit food night see "
    "local most near about there their which when after walk tour temple market morning evening train "
    "station old street river park museum town route plan tea rice noodle beach view price room stay "
    "ticket bus taxi map guide east west north south area famous small great good new long short open "
    "then next before because while but so if here where how what why each every many some few late early "
    "breakfast lunch dinner shop coffee garden castle bridge lake hill island coast harbor fort shrine "
    "night market snack dish soup fish pork beef duck egg tofu cake fruit mango milk sweet spicy fresh hot "
    "cold warm quiet busy crowded easy quick slow cheap budget luxury family friends couple solo weekend "
    "holiday season spring summer autumn winter rain sun wind cloud sea mountain valley trail bike boat "
    "flight airport check book reserve cancel arrive leave return stop start finish enjoy try taste explore "
    ": ; ! ? - ( ) 1 2 3 4 5 10 20 30 2024 km am pm"
)


_NO_SPACE_BEFORE = frozenset({"\n", ",", ".", ":", ";", "!", "?", ")"})


class TextSampler:
    """Draws output token ids from a fixed word list with a Zipf law; deterministic per seed."""

    _TABLE_BITS = 14

    def __init__(self, tokenizer: Tokenizer) -> None:
        words = [w if w in _NO_SPACE_BEFORE else " " + w for w in [*_OUTPUT_TEXT.split(), "\n"]]
        ids = [tokenizer.piece_id(w) for w in words]
        weights = [1.0 / (rank + 2) for rank in range(len(ids))]
        rng = random.Random(0)
        # A precomputed table turns each draw into one getrandbits call.
        self._table = rng.choices(ids, weights=weights, k=1 << self._TABLE_BITS)

    def draw(self, rng: random.Random) -> int:
        return self._table[rng.getrandbits(self._TABLE_BITS)]
