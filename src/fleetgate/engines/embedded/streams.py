"""A request's sequences as they finish or stream: vLLM's SSE chunks, or whole answers to render."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from fleetgate.engines.embedded.batcher import Delta, Sequence
from fleetgate.engines.embedded.tools import ToolCallStream
from fleetgate.protocol import InternalServerError, Usage
from fleetgate.worker import render

FAILED = "the engine failed while generating"


async def deltas(seqs: list[Sequence]) -> AsyncIterator[tuple[int, Delta]]:
    """Each sequence's output as it comes, several deltas of one sequence merged into one."""
    if len(seqs) == 1:
        while True:
            d = _merged(await seqs[0].stream.next())
            yield 0, d
            if d.finish_reason is not None:
                return
    queue: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()

    async def pump(i: int) -> None:
        while True:
            d = _merged(await seqs[i].stream.next())
            await queue.put((i, d))
            if d.finish_reason is not None:
                return

    tasks = [asyncio.ensure_future(pump(i)) for i in range(len(seqs))]
    try:
        live = len(seqs)
        while live:
            i, d = await queue.get()
            yield i, d
            live -= d.finish_reason is not None
    finally:
        for t in tasks:
            t.cancel()


def _merged(deltas: list[Delta]) -> Delta:
    if len(deltas) == 1:
        return deltas[0]
    last = deltas[-1]
    text = "".join(d.text for d in deltas)
    return Delta(text, last.finish_reason, last.stop_reason)


async def collect(seqs: list[Sequence]) -> list[tuple[str, str, str | None]]:
    """(text, finish_reason, stop_reason) of each sequence once all have finished."""
    texts: list[list[str]] = [[] for _ in seqs]
    ends: list[tuple[str, str | None]] = [("", None)] * len(seqs)
    async for i, d in deltas(seqs):
        texts[i].append(d.text)
        if d.finish_reason is not None:
            ends[i] = (d.finish_reason, d.stop_reason)
    return [("".join(t), reason, stop) for t, (reason, stop) in zip(texts, ends, strict=True)]


async def chat_chunks(
    enc: render.ChatChunks,
    seqs: list[Sequence],
    prompt_len: int,
    usage: bool,
    parse_tools: bool,
    count_parse: Callable[[bool], None],
) -> AsyncIterator[bytes]:
    """A chat stream as vLLM writes it: role chunks, content or tool-call deltas, finish, usage, [DONE]."""
    for i in range(len(seqs)):
        yield enc.role(i)
    tool_streams = [ToolCallStream() if parse_tools else None for _ in seqs]
    async for i, d in deltas(seqs):
        if d.finish_reason == "error":
            yield InternalServerError(FAILED).to_sse()
            yield render.DONE
            return
        ts = tool_streams[i]
        if ts is None:
            if d.finish_reason is not None:
                yield enc.finish(i, {"content": d.text}, d.finish_reason, d.stop_reason, not usage)
            elif d.text:
                yield enc.content(i, d.text)
            continue
        pieces = ts.feed(d.text)
        if d.finish_reason is not None:
            pieces += ts.finish()
        for piece in pieces:
            count_parse("tool_calls" in piece)
            yield enc.delta(i, piece)
        if d.finish_reason is not None:
            reason = "tool_calls" if ts.called and d.finish_reason == "stop" else d.finish_reason
            yield enc.finish(i, {}, reason, d.stop_reason, not usage)
    if usage:
        yield enc.usage(Usage(prompt_len, sum(len(s.output) for s in seqs)))
    yield render.DONE


async def completion_chunks(
    enc: render.CompletionChunks, seqs: list[Sequence], prompt_tokens: int, usage: bool
) -> AsyncIterator[bytes]:
    """A completions stream as vLLM writes it: text chunks, finish, usage, [DONE]."""
    async for i, d in deltas(seqs):
        if d.finish_reason == "error":
            yield InternalServerError(FAILED).to_sse()
            yield render.DONE
            return
        if d.finish_reason is not None:
            yield enc.finish(i, d.text, d.finish_reason, d.stop_reason, not usage)
        elif d.text:
            yield enc.text(i, d.text)
    if usage:
        yield enc.usage(Usage(prompt_tokens, sum(len(s.output) for s in seqs)))
    yield render.DONE
