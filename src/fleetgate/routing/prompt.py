"""From a request body to what prefix and session routing need: block keys, a prompt size, a session key.

A pool's tokenizer decides the key space (`prefix_keys`): `builtin` renders chats and tokenizes them exactly
as fleetgate's simulator does, so its keys meet the simulator's KV events; a model's directory or hub id loads
that model's own tokenizer and chat template (transformers), so its keys meet a real vLLM's events; `none`
hashes the rendered text.
Token-id prompts (`/v1/completions` with a list of ints) are always hashed as tokens: those are the engine's
own ids.

Hashing is incremental across a conversation: the chain after a conversation's messages is kept (bounded
LRU), so the next turn, which repeats them, hashes only what is new. The same holds for a shared system
prompt. Work grows with the new text only, which keeps long multi-turn prompts cheap.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fleetgate.chat_template import render_ids, template_message
from fleetgate.fleet.prefix_keys import BYTES_PER_TOKEN, Chain, seed_for
from fleetgate.tokenizer import Tokenizer, chat_turns, generation_prompt_ids, turn_ids

__all__ = ["PromptHasher", "PromptInfo", "TokenizerError"]


class TokenizerError(ValueError):
    """`routing.tokenizer` names a model tokenizer that cannot be used (not found, no template, no extra)."""


@dataclass(frozen=True, slots=True)
class PromptInfo:
    keys: list[int]  # one per full block
    tokens: int  # prompt length in tokens (estimated from bytes in text space)
    session: int | None  # the conversation before its last user turn, when it has one


def _token_prompt(prompt: object) -> array[int] | None:
    """A token-id prompt as packed ids; None for text, or for ids no vocabulary has (the engine refuses
    those itself)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        prompt = prompt[0]  # a batch: the first prompt decides
    if not isinstance(prompt, list) or not prompt or type(prompt[0]) is not int:
        return None
    try:
        return array("I", prompt)  # checks every item is an int in range, at C speed
    except (TypeError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class _Saved:
    """A chain kept for the next turn: its keys packed (8 bytes each, not a 40-byte int and its pointer)."""

    crc: int
    keys: array[int]
    tail: bytes

    @classmethod
    def of(cls, chain: Chain) -> _Saved:
        return cls(chain.crc, array("Q", chain.keys or ()), chain.tail)

    def chain(self, block_bytes: int) -> Chain:
        return Chain(block_bytes, self.crc, self.keys.tolist(), self.tail)


class PromptHasher:
    """One per pool. Thread-safe: large prompts are hashed in a worker thread, off the event loop."""

    def __init__(
        self, mode: str, block_size: int = 16, cache_size: int = 4096, cache_keys: int = 1 << 21
    ) -> None:
        """`mode`: "none", "builtin", or a model directory / hub id whose tokenizer to load. The chains kept
        for later turns are bounded twice: `cache_size` conversations and `cache_keys` keys in all (16 MiB;
        a client sending distinct 4 MiB prompts must not fill memory through the count bound alone)."""
        self.mode = mode
        self.block_size = block_size
        self.tokenizer = Tokenizer() if mode == "builtin" else None
        self.model_tokenizer = None if mode in ("none", "builtin") else _load_model_tokenizer(mode)
        self._cache: OrderedDict[tuple[int, int], _Saved] = OrderedDict()
        self._cache_size = cache_size
        self._cache_keys = cache_keys
        self._cached_keys = 0  # keys held by the chains in _cache
        self._lock = threading.Lock()

    @property
    def cached_keys(self) -> int:
        """Keys held by the chains kept for later turns."""
        return self._cached_keys

    @property
    def block_bytes(self) -> int:
        # A text block stands for block_size tokens of about BYTES_PER_TOKEN bytes each; a token id is 4
        # bytes too, so one size serves both spaces.
        return self.block_size * BYTES_PER_TOKEN

    def info(self, kind: str, body: Mapping[str, Any], adapter: str | None) -> PromptInfo | None:
        """Keys for a chat, completions or responses body; None for bodies with no prompt to cache, or whose
        shape the engine will refuse (it answers those with its own 400: a routing hint never fails a
        request)."""
        try:
            return self._info(kind, body, adapter)
        except Exception:  # any shape a client can send: a malformed body only loses its routing hint
            return None

    def _info(self, kind: str, body: Mapping[str, Any], adapter: str | None) -> PromptInfo | None:
        seed = seed_for(adapter)
        if kind == "chat":
            messages = body.get("messages")
            if isinstance(messages, list) and all(isinstance(m, Mapping) for m in messages):
                tools = body.get("tools")
                return self._chat(messages, tools if isinstance(tools, list) else None, seed)
            return None
        if kind == "completions":
            prompt = body.get("prompt")
            ids = _token_prompt(prompt)
            if ids is not None:
                return self._tokens(ids, seed)
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, str):
                return self._text(prompt, seed)
            return None
        if kind == "responses":
            given = body.get("input")
            if isinstance(given, str):
                return self._chat([{"role": "user", "content": given}], None, seed)
            if isinstance(given, list) and all(isinstance(m, Mapping) for m in given):
                return self._chat(given, None, seed)
        return None

    def _tokens(self, ids: Sequence[int], seed: int, session: int | None = None) -> PromptInfo:
        chain = Chain.start(self.block_bytes, seed).extend_tokens(ids)
        return PromptInfo(chain.keys or [], len(ids), session)

    def _text(self, text: str, seed: int) -> PromptInfo:
        if self.model_tokenizer is not None:
            # vLLM tokenizes a completions prompt with the tokenizer's special tokens (a BOS, for most).
            return self._tokens(self.model_tokenizer.encode(text), seed)
        if self.tokenizer is not None:
            return self._tokens(self.tokenizer.encode(text), seed)
        data = text.encode()
        chain = Chain.start(self.block_bytes, seed).extend(data)
        return PromptInfo(chain.keys or [], len(data) // BYTES_PER_TOKEN, None)

    def _turn(self, role: str, text: str) -> bytes:
        if self.tokenizer is not None:
            return array("I", turn_ids(self.tokenizer, role, text)).tobytes()
        return f"<|im_start|>{role}\n{text}<|im_end|>\n".encode()

    def _chat(self, messages: Sequence[Mapping[str, Any]], tools: list[Any] | None, seed: int) -> PromptInfo:
        if self.model_tokenizer is not None:
            return self._templated(messages, tools, seed)
        turns = chat_turns(messages, tools)
        # A running signature of the turns so far names each conversation prefix (in this process only).
        sig = hash((seed, orjson.dumps(tools) if tools else b""))
        sigs = []
        for role, text in turns:
            sig = hash((sig, role, text))
            sigs.append(sig)
        block_bytes = self.block_bytes
        chain: Chain | None = None
        done = 0
        with self._lock:
            for i in range(len(sigs) - 1, -1, -1):
                cached = self._cache.get((block_bytes, sigs[i]))
                if cached is not None:
                    self._cache.move_to_end((block_bytes, sigs[i]))
                    chain, done = cached.chain(block_bytes), i + 1
                    break
        if chain is None:
            chain = Chain.start(block_bytes, seed)
        # Keep the chain after the first turn (a system prompt others share) and after the last (the next
        # turn of this conversation starts with all of it).
        keep = {0, len(turns) - 1} - set(range(done))
        for i in range(done, len(turns)):
            chain.extend(self._turn(*turns[i]))
            if i in keep:
                self._remember((block_bytes, sigs[i]), _Saved.of(chain))
        if self.tokenizer is not None:
            chain.extend(array("I", generation_prompt_ids(self.tokenizer)).tobytes())
        size = (len(chain.keys or ()) * block_bytes + len(chain.tail)) // BYTES_PER_TOKEN
        session = _session(messages, sigs, len(turns) - len(messages))
        return PromptInfo(chain.keys or [], size, session)

    def _templated(
        self, messages: Sequence[Mapping[str, Any]], tools: list[Any] | None, seed: int
    ) -> PromptInfo:
        """The model's own template over the whole conversation (templates see all messages at once, so this
        path is not incremental); a template that refuses the messages leaves the prompt unhashed."""
        from jinja2 import TemplateError

        try:
            ids = render_ids(self.model_tokenizer, [template_message(m) for m in messages], tools)
        except (TemplateError, TypeError, ValueError):
            return PromptInfo([], 0, None)
        sigs = []
        sig = hash(seed)
        for m in messages:
            sig = hash((sig, str(m.get("role")), str(m.get("content"))))
            sigs.append(sig)
        return self._tokens(ids, seed, _session(messages, sigs, 0))

    def _remember(self, key: tuple[int, int], saved: _Saved) -> None:
        if len(saved.keys) > self._cache_keys:
            return  # a prompt larger than the whole budget would only evict everything else
        with self._lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._cached_keys -= len(old.keys)
            self._cache[key] = saved
            self._cached_keys += len(saved.keys)
            while len(self._cache) > self._cache_size or self._cached_keys > self._cache_keys:
                _, dropped = self._cache.popitem(last=False)
                self._cached_keys -= len(dropped.keys)


def _load_model_tokenizer(source: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerError(
            f"routing.tokenizer {source!r} is a model's tokenizer, which needs transformers: "
            "pip install 'fleetgate[embedded]'"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise TokenizerError(f"routing.tokenizer {source!r}: cannot load a tokenizer from it ({e})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizerError(f"routing.tokenizer {source!r}: the tokenizer has no chat template")
    return tokenizer


def _session(messages: Sequence[Mapping[str, Any]], sigs: list[int], offset: int) -> int | None:
    """The signature of the conversation before its last user turn, if an assistant spoke in it: a
    conversation of its own, not just a system prompt shared by everyone."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    if last_user <= 0 or not any(m.get("role") == "assistant" for m in messages[:last_user]):
        return None
    return sigs[last_user - 1 + offset]
