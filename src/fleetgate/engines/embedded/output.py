"""A sequence's text as tokens arrive: incremental detokenization and stop strings, as vLLM's detokenizer.

Text that could be the start of a stop string is held back until it is known not to be one, so a stop string
never reaches the client, and generation (and billing) ends at the token that completed it.
"""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream


class TextOutput:
    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        # The Rust tokenizer behind a transformers fast tokenizer: DecodeStream steps it without Python.
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self.stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._pending = ""
        self.stop_hit: str | None = None

    def add(self, token: int) -> str:
        """Text that is now safe to send; sets `stop_hit` when a stop string completes."""
        piece = self._stream.step(self._tokenizer, token)
        if piece:
            self._pending += piece
        if not self._pending:
            return ""
        for stop in self.stops:
            at = self._pending.find(stop)
            if at >= 0:
                self.stop_hit = stop
                out, self._pending = self._pending[:at], ""
                return out
        cut = len(self._pending) - self._hold
        if cut <= 0:
            return ""
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out
