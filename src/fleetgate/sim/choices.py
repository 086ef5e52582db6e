"""One choice of a generation request: its engine request, stop strings, tool-call stream and the
merged token batches of several choices."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from fleetgate.sim.engine import EngineRequest
from fleetgate.sim.scripts import ToolStream
from fleetgate.tokenizer import IM_END


class Crash(Exception):
    """A fault that kills the process mid-stream, as a dying vLLM would."""


@dataclass(slots=True)
class Choice:
    """Per-choice decoding state: stop strings and how its tokens become deltas."""

    index: int
    req: EngineRequest
    stops: tuple[str, ...]
    token_text: Callable[[int], str]
    tool: ToolStream | None = None
    script: tuple[str, ...] = ()  # the text of each scripted token (see `text`)
    shown: int = 0  # tokens streamed so far
    tail: str = ""
    stop_hit: str | None = None
    hit_piece: str = ""  # the text of the stopping token that precedes the stop string

    def __post_init__(self) -> None:
        if self.stops:
            self.req.stop = self.watch

    def watch(self, token: int) -> bool:
        """Called by the engine for every generated token: True once a stop string is complete, so
        generation (and billing) ends at that token, as vLLM's output processor ends it."""
        text = self.text(len(self.req.output) - 1, token)
        window = self.tail + text
        for s in self.stops:
            at = window.find(s)
            if at >= 0:
                self.stop_hit = s
                self.hit_piece = window[len(self.tail) : at] if at >= len(self.tail) else ""
                return True
        keep = max(len(s) for s in self.stops) - 1
        self.tail = window[-keep:] if keep else ""
        return False

    def text(self, pos: int, token: int) -> str:
        """The text of output token `pos`: a scripted answer's own piece, as the stand-in tokenizer may have
        given that piece's id to another text first, else the token's text."""
        if token == IM_END:
            return ""
        return self.script[pos] if pos < len(self.script) else self.token_text(token)

    def final_text(self, text: str) -> str:
        return text[: text.find(self.stop_hit)] if self.stop_hit is not None else text


async def merge(choices: list[Choice]) -> AsyncIterator[tuple[Choice, list[int], str | None]]:
    """Token batches of all choices as they come; one choice (the common case) needs no tasks."""
    if len(choices) == 1:
        c = choices[0]
        while True:
            tokens, finish = await c.req.next_tokens()
            yield c, tokens, finish
            if finish is not None:
                return
    queue: asyncio.Queue[tuple[Choice, list[int], str | None]] = asyncio.Queue()

    async def pump(c: Choice) -> None:
        while True:
            tokens, finish = await c.req.next_tokens()
            await queue.put((c, tokens, finish))
            if finish is not None:
                return

    tasks = [asyncio.ensure_future(pump(c)) for c in choices]
    try:
        live = len(choices)
        while live:
            c, tokens, finish = await queue.get()
            yield c, tokens, finish
            if finish is not None:
                live -= 1
    finally:
        for t in tasks:
            t.cancel()


def sampling_seed(
    seed: int | None, index: int, temperature: float | None, prompt: Sequence[int], lora: str | None
) -> int | None:
    """The seed of one choice's text. At temperature 0 vLLM decodes greedily: the same prompt (and adapter)
    gives the same text whatever the seed, in every choice; otherwise choice i of a seeded request uses
    seed + i, and an unseeded one a fresh seed (None)."""
    if temperature == 0:
        return zlib.crc32(b"".join(t.to_bytes(4, "little") for t in prompt) + (lora or "").encode())
    return None if seed is None else seed + index
