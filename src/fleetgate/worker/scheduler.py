"""The scheduling core both workers share: vLLM V1's schedule and the bookkeeping half of postprocess.

schedule: running sequences first (the next decode token, or the next chunk of a prompt), preempting the
newest running sequence when KV blocks run out; then waiting ones while `max_num_seqs`, the step's token
budget and free blocks allow, reusing cached prefix blocks. A waiting sequence whose LoRA adapter would
exceed `max_loras` is deferred (it keeps its place; vLLM counts it as waiting for a LoRA slot).

postprocess (the shared half): count the computed tokens, register the blocks they fill for prefix reuse,
append a sampled token (extending the block-hash chain, stamping first/last token times) and finish a
sequence. What a token means (EOS, stop strings, grammars, deltas to the client) stays each engine's own:
the simulator's sim/engine.py and the embedded engine's engines/embedded/batcher.py.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Protocol, TypeVar

from fleetgate.worker.kvcache import Block, KVCache, chain_hashes, lora_key
from fleetgate.worker.metrics import EngineStats


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


# The members as plain names for the per-token loops: looking a member up on the class costs ~100 ns on
# Python 3.11, a global ~20 ns.
WAITING, RUNNING, FINISHED = Status.WAITING, Status.RUNNING, Status.FINISHED


class Scheduled(Protocol):
    """What the core reads and writes on a sequence (the simulator's EngineRequest, the embedded Sequence)."""

    prompt: list[int]
    output: list[int]
    lora: str | None
    state: Status
    blocks: list[Block]
    hashes: list[int]  # block hashes of the full blocks of prompt + output, chained
    computed: int  # tokens whose keys and values are in the cache
    committed: int  # full blocks registered for prefix reuse
    cached_tokens: int  # prompt tokens found in the prefix cache (-1: never scheduled)
    deferred: bool  # waiting for a LoRA slot
    scheduled_at: float
    first_token_at: float
    last_token_at: float
    # What EngineStats.on_arrival / on_finish read besides the fields above.
    max_tokens: int
    params_n: int
    arrival: float

    @property
    def total_len(self) -> int: ...
    def token_slice(self, lo: int, hi: int) -> list[int]: ...
    def append(self, token: int) -> None: ...


S = TypeVar("S", bound=Scheduled)


@dataclass(slots=True)
class Work(Generic[S]):
    """One sequence's share of a step: `tokens` to compute, and whether a token is sampled after them."""

    seq: S
    tokens: int
    last: bool


@dataclass(frozen=True, slots=True)
class Limits:
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    max_loras: int = 1


def _lora_id(seq: Scheduled) -> int:
    return lora_key(seq.lora) if seq.lora else 0


class Scheduler(Generic[S]):
    """The waiting queue, the running list and the KV blocks they hold.

    `stats` are vLLM's counters; `lock` guards them where a scrape reads them from another thread (the
    embedded engine steps on its own thread; the simulator steps on the event loop and needs none).
    """

    def __init__(
        self,
        kv: KVCache,
        limits: Limits,
        stats: EngineStats,
        clock: Callable[[], float],
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.kv = kv
        self.limits = limits
        self.stats = stats
        self.clock = clock
        self.lock: AbstractContextManager[object] = lock if lock is not None else contextlib.nullcontext()
        self.waiting: deque[S] = deque()
        self.running: list[S] = []

    # ---- queue -----------------------------------------------------------------------------------------
    def add(self, seq: S) -> None:
        seq.hashes = chain_hashes(seq.prompt, self.limits.block_size, _lora_id(seq))
        self.waiting.append(seq)
        with self.lock:
            self.stats.on_arrival(seq)

    def remove(self, seq: S) -> None:
        """Take a sequence out of the running list or the waiting queue (it is about to finish)."""
        if seq.state == RUNNING:
            self.running.remove(seq)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)

    def release(self, seq: S) -> None:
        self.kv.free(seq.blocks)
        seq.blocks = []
        seq.computed = seq.committed = 0

    def preempt(self, seq: S) -> None:
        """Give a sequence's blocks back; it waits at the head of the queue and recomputes its context."""
        self.running.remove(seq)
        self.release(seq)
        seq.state = WAITING
        self.waiting.appendleft(seq)
        with self.lock:
            self.stats.preemptions += 1

    def _reuse_prefix(self, seq: S) -> None:
        bs = self.limits.block_size
        # vLLM always recomputes at least the last prompt token (its logits are needed), so a hit stops
        # one short.
        usable = (seq.total_len - 1) // bs
        hit = self.kv.longest_hit(seq.hashes[:usable])
        seq.blocks = self.kv.touch(seq.hashes[:hit])
        seq.committed = hit
        seq.computed = hit * bs
        if seq.cached_tokens < 0:
            seq.cached_tokens = seq.computed
            with self.lock:
                self.stats.on_prefix_query(len(seq.prompt), seq.computed)

    # ---- schedule --------------------------------------------------------------------------------------
    def schedule(self) -> list[Work[S]]:
        limits = self.limits
        budget = limits.max_num_batched_tokens
        batch: list[Work[S]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            left = seq.total_len - seq.computed
            n = min(left, budget)
            while not self.kv.grow(seq.blocks, seq.computed + n):
                victim = self.running[-1]
                self.preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.state != RUNNING:
                continue  # it was the victim; the next one now sits at index i
            batch.append(Work(seq, n, n == left))
            budget -= n
            i += 1
        active_loras = {s.lora for s in self.running if s.lora}
        skipped: list[S] = []
        now = self.clock()
        while self.waiting and budget > 0 and not preempted and len(self.running) < limits.max_num_seqs:
            seq = self.waiting[0]
            if seq.lora and seq.lora not in active_loras and len(active_loras) >= limits.max_loras:
                seq.deferred = True
                skipped.append(self.waiting.popleft())
                continue
            if not seq.blocks:
                self._reuse_prefix(seq)
            left = seq.total_len - seq.computed
            n = min(left, budget)
            if not self.kv.grow(seq.blocks, seq.computed + n):
                self.release(seq)
                break
            self.waiting.popleft()
            seq.state = RUNNING
            seq.deferred = False
            seq.scheduled_at = seq.scheduled_at or now
            if seq.lora:
                active_loras.add(seq.lora)
            self.running.append(seq)
            batch.append(Work(seq, n, n == left))
            budget -= n
        self.waiting.extendleft(reversed(skipped))
        return batch

    # ---- postprocess -----------------------------------------------------------------------------------
    def computed(self, w: Work[S]) -> tuple[int, int] | None:
        """Count a step's computed tokens and register the blocks they filled for prefix reuse; the range
        of blocks newly registered (for KV events), or None."""
        seq = w.seq
        seq.computed += w.tokens
        # Never past the hash chain: a block is registered under the hash of its own tokens.
        full = min(seq.computed // self.limits.block_size, len(seq.hashes))
        if full <= seq.committed:
            return None
        lo = seq.committed
        for j in range(lo, full):
            self.kv.commit(seq.blocks[j], seq.hashes[j])
        seq.committed = full
        return lo, full

    def append(self, seq: S, token: int, now: float) -> None:
        """A sampled token joins the sequence: the hash chain grows by a block when one fills.

        Per token, so no lock of its own: the embedded engine holds its stats lock around postprocess."""
        bs = self.limits.block_size
        seq.append(token)
        n = seq.total_len
        if n % bs == 0:
            parent = seq.hashes[-1] if seq.hashes else None
            seq.hashes += chain_hashes(seq.token_slice(n - bs, n), bs, _lora_id(seq), parent)
        if seq.first_token_at:
            self.stats.on_token_gap(now - seq.last_token_at)
        else:
            seq.first_token_at = now
        seq.last_token_at = now

    def finish(self, seq: S, reason: str, now: float) -> None:
        """The sequence is done (call `remove` first if it is still queued or running)."""
        seq.state = FINISHED
        self.release(seq)
        with self.lock:
            self.stats.on_finish(seq, reason, now)

    # ---- what /metrics and the admin view read ---------------------------------------------------------
    def kv_usage(self) -> float:
        return self.kv.usage()

    def waiting_by_reason(self) -> tuple[int, int]:
        deferred = sum(1 for s in self.waiting if s.deferred)
        return len(self.waiting) - deferred, deferred

    def lora_state(self) -> tuple[list[str], list[str]]:
        running = list(dict.fromkeys(s.lora for s in self.running if s.lora))
        waiting = list(dict.fromkeys(s.lora for s in self.waiting if s.lora))
        return running, waiting
