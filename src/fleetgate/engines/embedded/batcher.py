"""Continuous batching: an engine thread that repeats schedule, run, postprocess.

Every step takes the running sequences (one decode token each, or the next chunk of a long prompt) and
admits waiting ones while `max_num_seqs`, the token budget and free KV blocks allow, so a request that
arrives mid-decode joins the very next step. Scheduling and blocks are the worker kit's, shared with the
simulator (prefix caching by block-hash chain, LRU eviction, vLLM's rules); when blocks run out the newest
sequence is preempted and recomputed later. The event loop hands work in through thread-safe queues and
gets each step's output back in one call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from fleetgate.engines.embedded.grammar import Masks
from fleetgate.engines.embedded.metrics import Stats
from fleetgate.engines.embedded.output import TextOutput
from fleetgate.engines.embedded.runner import Chunk, ModelRunner
from fleetgate.engines.embedded.sampling import Row, Sampler, SamplingParams
from fleetgate.worker.kvcache import Block, KVCache
from fleetgate.worker.scheduler import FINISHED, RUNNING, Limits, Scheduler, Status, Work

log = logging.getLogger("fleetgate.embedded")


@dataclass(frozen=True, slots=True)
class Delta:
    """What one step produced for a sequence: new text, and the outcome once it ended."""

    text: str
    finish_reason: str | None = None
    stop_reason: str | None = None


class SequenceStream:
    """The event-loop side of a sequence: the engine pushes deltas, a request handler awaits them."""

    def __init__(self) -> None:
        self._items: list[Delta] = []
        self._waiter: asyncio.Future[None] | None = None

    def push(self, delta: Delta) -> None:
        self._items.append(delta)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> list[Delta]:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        items, self._items = self._items, []
        return items


@dataclass(eq=False, slots=True)
class Sequence:
    """One choice of one request, from prompt to finish."""

    prompt: list[int]
    params: SamplingParams
    text: TextOutput
    stream: SequenceStream = field(default_factory=SequenceStream)
    matcher: Any = None  # llguidance.LLMatcher for constrained output
    generator: torch.Generator | None = None
    params_n: int = 1
    arrival: float = 0.0
    output: list[int] = field(default_factory=list)
    state: Status = Status.WAITING
    lora: str | None = None  # no adapters here; the shared scheduler reads it
    deferred: bool = False
    blocks: list[Block] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose keys and values are in the cache
    committed: int = 0  # full blocks registered for prefix reuse
    cached_tokens: int = -1  # prompt tokens found in the prefix cache (-1: never scheduled)
    scheduled_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    max_tokens: int = field(init=False)  # what the metrics read; the same as params.max_tokens
    ids: list[int] = field(init=False)  # prompt and output: the context the model sees

    def __post_init__(self) -> None:
        self.max_tokens = self.params.max_tokens
        self.ids = list(self.prompt)

    @property
    def total_len(self) -> int:
        return len(self.ids)

    def token_slice(self, lo: int, hi: int) -> list[int]:
        return self.ids[lo:hi]

    def append(self, token: int) -> None:
        self.output.append(token)
        self.ids.append(token)


@dataclass(frozen=True, slots=True)
class EngineLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int
    num_blocks: int
    enable_prefix_caching: bool


class Engine:
    def __init__(
        self,
        runner: ModelRunner,
        sampler: Sampler,
        limits: EngineLimits,
        stats: Stats,
        eos_ids: frozenset[int],
        vocab_size: int,
    ) -> None:
        self.runner = runner
        self.sampler = sampler
        self.limits = limits
        self.stats = stats
        self.eos_ids = eos_ids
        kv = KVCache(limits.num_blocks, limits.block_size, limits.enable_prefix_caching)
        shared = Limits(limits.max_num_seqs, limits.max_num_batched_tokens, limits.block_size)
        self.sched: Scheduler[Sequence] = Scheduler(kv, shared, stats.engine, time.monotonic, stats.lock)
        self.masks = Masks(vocab_size)
        self.sleep_level = 0  # never asleep; the metrics say awake, as vLLM's do
        self._inbox: deque[list[Sequence]] = deque()
        self._aborts: deque[Sequence] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: list[tuple[SequenceStream, Delta]] = []

    @property
    def kv(self) -> KVCache:
        return self.sched.kv

    @property
    def waiting(self) -> deque[Sequence]:
        return self.sched.waiting

    @property
    def running(self) -> list[Sequence]:
        return self.sched.running

    # ---- called from the event loop ----------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run_forever, name="embedded-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def add(self, seqs: list[Sequence]) -> None:
        self._inbox.append(seqs)
        self._wake.set()

    def abort(self, seqs: list[Sequence]) -> None:
        self._aborts.extend(s for s in seqs if s.state != FINISHED)
        self._wake.set()

    # ---- the engine thread -----------------------------------------------------------------------------
    def _run_forever(self) -> None:
        while not self._stopping:
            self._take_inbox()
            if not self.waiting and not self.running:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                with torch.inference_mode():
                    self.step()
            except Exception:
                # A bug or an out-of-memory in one step fails the requests in flight, not the server.
                log.exception("engine step failed; failing the requests in it")
                self._fail_all()
            self._deliver()

    def _take_inbox(self) -> None:
        while self._inbox:
            for seq in self._inbox.popleft():
                self.sched.add(seq)
        while self._aborts:
            seq = self._aborts.popleft()
            if seq.state != FINISHED:
                self.sched.remove(seq)
                self._finish(seq, "abort", time.monotonic())

    def step(self) -> None:
        work = self.sched.schedule()
        if not work:
            return
        chunks = [
            Chunk(w.seq.token_slice(w.seq.computed, w.seq.computed + w.tokens), w.seq.computed,
                  [b.id for b in w.seq.blocks], w.last)
            for w in work
        ]  # fmt: skip
        logits = self.runner.run(chunks)
        sampled = [w.seq for w in work if w.last]
        tokens = self._sample(logits, sampled) if sampled else []
        with self.stats.lock:
            self.stats.engine.on_iteration(sum(len(c.tokens) for c in chunks))
            self.stats.on_step(len(work))
            self.postprocess(work, dict(zip(sampled, tokens, strict=True)), time.monotonic())
        # The block manager records vLLM's KV events for a publisher; this engine publishes none, so they go.
        self.kv.drain_events()

    # ---- run -------------------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        rows = []
        for seq in seqs:
            p = seq.params
            allowed = None
            if seq.matcher is not None:
                allowed = self.masks.allowed(seq.matcher).to(logits.device)
            block_eos = p.ignore_eos or len(seq.output) < p.min_tokens
            rows.append(Row(p, seq.output, seq.generator, allowed, block_eos))
        return self.sampler.sample(logits, rows)

    # ---- postprocess -----------------------------------------------------------------------------------
    def postprocess(self, work: list[Work[Sequence]], tokens: dict[Sequence, int], now: float) -> None:
        for w in work:
            seq = w.seq
            if seq.state != RUNNING:
                continue
            self.sched.computed(w)
            token = tokens.get(seq)
            if token is None:
                continue  # the prompt goes on next step
            self._append(seq, token, now)

    def _append(self, seq: Sequence, token: int, now: float) -> None:
        self.sched.append(seq, token, now)
        reason: str | None = None
        text = ""
        if token in self.eos_ids and not seq.params.ignore_eos:
            reason = "stop"
        else:
            text = seq.text.add(token)
            if seq.text.stop_hit is not None:
                reason = "stop"
        if seq.matcher is not None and (not seq.matcher.consume_token(token) or seq.matcher.is_stopped()):
            reason = reason or "stop"
        if reason is None and (
            len(seq.output) >= seq.params.max_tokens or seq.total_len >= self.limits.max_model_len
        ):
            reason = "length"
        if reason is None:
            self._outbox.append((seq.stream, Delta(text)))
            return
        if seq.text.stop_hit is None:
            text += seq.text.flush()
        self.sched.remove(seq)
        self._finish(seq, reason, now)
        self._outbox.append((seq.stream, Delta(text, reason, seq.text.stop_hit)))

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        self.sched.finish(seq, reason, now)

    def _fail_all(self) -> None:
        now = time.monotonic()
        for seq in [*self.running, *self.waiting]:
            self._finish(seq, "error", now)
            self._outbox.append((seq.stream, Delta("", "error")))
        self.running.clear()
        self.waiting.clear()

    def _deliver(self) -> None:
        if not self._outbox or self._loop is None:
            return
        items, self._outbox = self._outbox, []
        self._loop.call_soon_threadsafe(_push_all, items)

    # ---- what /metrics reads ---------------------------------------------------------------------------
    def kv_usage(self) -> float:
        return self.sched.kv_usage()

    def waiting_by_reason(self) -> tuple[int, int]:
        return self.sched.waiting_by_reason()

    def lora_state(self) -> tuple[list[str], list[str]]:
        return self.sched.lora_state()


def _push_all(items: list[tuple[SequenceStream, Delta]]) -> None:
    for stream, delta in items:
        stream.push(delta)
