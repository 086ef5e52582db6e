"""The simulated engine: vLLM V1's iteration-level loop in three verbs (schedule, run, postprocess).

Each step admits waiting requests within `max_num_seqs` and a token budget of `max_num_batched_tokens`
(chunked prefill), allocates KV blocks, reuses cached prefix blocks, preempts the newest running request
when blocks run out and defers requests whose LoRA adapter would exceed `max_loras` (the worker kit's
scheduler, shared with the embedded engine), and takes as long as the profile's step model says. Time
runs on absolute deadlines divided by the time scale, so a slow event loop catches up instead of drifting.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetgate.sim.profiles import Profile
from fleetgate.tokenizer import IM_END, TextSampler
from fleetgate.worker.kvcache import Block, KVCache, lora_key
from fleetgate.worker.metrics import EngineStats
from fleetgate.worker.scheduler import FINISHED, RUNNING, Limits, Scheduler, Status, Work

# A late event loop may run steps back to back to catch up, but never owes more than this much wall time.
_MAX_LAG = 0.25


@dataclass(slots=True, eq=False)
class EngineRequest:
    """One sequence in the engine, and the channel its tokens leave by."""

    rid: str
    prompt: list[int]
    max_tokens: int
    rng: random.Random
    # Output ends with EOS after this many tokens (None: never, as with ignore_eos).
    eos_after: int | None = None
    # Tokens the answer must consist of (a tool call, JSON); sampled text follows if they run out.
    script: tuple[int, ...] = ()
    lora: str | None = None
    # Called with each generated token; True ends the request with "stop" (a stop string completed).
    stop: Callable[[int], bool] | None = None
    arrival: float = 0.0
    params_n: int = 1
    # channel to the API layer
    pending: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    waiter: asyncio.Future[None] | None = None
    # engine state
    state: Status = Status.WAITING
    output: list[int] = field(default_factory=list)
    computed: int = 0
    blocks: list[Block] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    committed: int = 0
    cached_tokens: int = -1
    deferred: bool = False
    scheduled_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0

    @property
    def total_len(self) -> int:
        return len(self.prompt) + len(self.output)

    def token_slice(self, lo: int, hi: int) -> list[int]:
        """all_tokens[lo:hi] without copying a long prompt."""
        p = len(self.prompt)
        if hi <= p:
            return self.prompt[lo:hi]
        if lo >= p:
            return self.output[lo - p : hi - p]
        return self.prompt[lo:] + self.output[: hi - p]

    def append(self, token: int) -> None:
        self.output.append(token)

    def notify(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next_tokens(self) -> tuple[list[int], str | None]:
        """Tokens produced since the last call, and the finish reason once finished."""
        while not self.pending and self.finish_reason is None:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        tokens = self.pending
        self.pending = []
        return tokens, self.finish_reason


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


@dataclass(frozen=True, slots=True)
class EngineArgs:
    """vLLM engine arguments the simulator honours (vLLM's names and meanings)."""

    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    num_gpu_blocks: int
    block_size: int = 16
    enable_prefix_caching: bool = True
    enable_lora: bool = False
    max_loras: int = 1
    enforce_eager: bool = False
    time_scale: float = 1.0


class Engine:
    def __init__(
        self,
        profile: Profile,
        args: EngineArgs,
        sampler: TextSampler,
        stats: EngineStats,
        publish: Callable[[list[dict[str, Any]]], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.profile = profile
        self.args = args
        self.sampler = sampler
        self.stats = stats
        # The calibrator drives schedule/postprocess itself on a virtual clock; servers use the loop's.
        self._clock = clock or _loop_time
        kv = KVCache(args.num_gpu_blocks, args.block_size, args.enable_prefix_caching)
        limits = Limits(args.max_num_seqs, args.max_num_batched_tokens, args.block_size, args.max_loras)
        self.sched: Scheduler[EngineRequest] = Scheduler(kv, limits, stats, self._clock)
        self.sleep_level = 0
        self._publish = publish
        self._work = asyncio.Event()
        self._awake = asyncio.Event()
        self._awake.set()
        self._deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        self._scale = args.time_scale
        self._lora_seen: tuple[list[str], list[str]] = ([], [])

    @property
    def kv(self) -> KVCache:
        return self.sched.kv

    @property
    def waiting(self) -> deque[EngineRequest]:
        return self.sched.waiting

    @property
    def running(self) -> list[EngineRequest]:
        return self.sched.running

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- requests --------------------------------------------------------------------------------------
    def add(self, req: EngineRequest) -> None:
        self.sched.add(req)
        self._work.set()

    def abort(self, req: EngineRequest, reason: str = "abort") -> None:
        """Stop a request: the client left ("abort") or a stop string ended it ("stop")."""
        if req.state == FINISHED:
            return
        self.sched.remove(req)
        self._finish(req, reason, self._now())

    # ---- sleep mode ------------------------------------------------------------------------------------
    async def sleep(self, level: int) -> None:
        seconds = self.profile.sleep.level1 if level == 1 else self.profile.sleep.level2
        self._awake.clear()
        await asyncio.sleep(seconds / self._scale)
        # Both levels give the KV cache memory back, so the prefix cache is gone.
        self.kv.reset()
        self.sleep_level = level

    async def wake_up(self) -> None:
        if self.sleep_level:
            await asyncio.sleep(self.profile.sleep.wake / self._scale)
        self.sleep_level = 0
        self._awake.set()

    @property
    def is_sleeping(self) -> bool:
        return not self._awake.is_set()

    # ---- the loop --------------------------------------------------------------------------------------
    def _now(self) -> float:
        return self._clock()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._awake.is_set():
                await self._awake.wait()
                self._deadline = loop.time()
            if not self.waiting and not self.running:
                await self._idle(loop)
                continue
            batch = self.schedule()
            if not batch:
                # Everything waiting is blocked (by max_loras): an arrival or a finish changes the picture.
                await self._idle(loop)
                continue
            now = loop.time()
            if self._deadline < now - _MAX_LAG:
                self._deadline = now
            self._deadline += self.step_seconds(batch) / self._scale
            delay = self._deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.postprocess(batch, loop.time())

    async def _idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._work.clear()
        await self._work.wait()
        # Idle time is not owed to anyone: the next step starts now, it does not catch up.
        self._deadline = loop.time()

    def step_seconds(self, batch: list[Work[EngineRequest]]) -> float:
        tokens = decode_ctx = 0
        decode_sq = pairs = 0.0
        knee = self.profile.step.KNEE
        for s in batch:
            req = s.seq
            tokens += s.tokens
            ctx = req.computed
            if ctx >= len(req.prompt):
                decode_ctx += ctx
                decode_sq += ctx * (ctx if ctx < knee else knee)
            else:
                pairs += s.tokens * (ctx + s.tokens / 2)
        self.stats.on_iteration(tokens)
        return self.profile.step.seconds(
            tokens, len(batch), decode_ctx, decode_sq, pairs, self.args.enforce_eager
        )

    def schedule(self) -> list[Work[EngineRequest]]:
        return self.sched.schedule()

    # ---- postprocess -----------------------------------------------------------------------------------
    def _next_token(self, req: EngineRequest) -> tuple[int, str | None]:
        i = len(req.output)
        if req.eos_after is not None and i >= req.eos_after:
            return IM_END, "stop"
        token = req.script[i] if i < len(req.script) else self.sampler.draw(req.rng)
        return token, ("length" if i + 1 >= req.max_tokens else None)

    def postprocess(self, batch: list[Work[EngineRequest]], now: float) -> None:
        stored: list[tuple[EngineRequest, int, int]] = []
        for w in batch:
            req = w.seq
            if req.state != RUNNING:
                continue
            span = self.sched.computed(w)
            if span is not None:
                stored.append((req, *span))
            if not w.last:
                continue  # prefill goes on next step
            token, reason = self._next_token(req)
            self.sched.append(req, token, now)
            if req.stop is not None and token != IM_END and req.stop(token):
                reason = "stop"
            req.pending.append(token)
            if reason is not None:
                self.sched.remove(req)
                self._finish(req, reason, now)
            else:
                req.notify()
        self._emit_events(stored)
        if self.args.enable_lora:
            state = self.lora_state()
            if state != self._lora_seen:
                self._lora_seen = state
                self.stats.on_lora_change(*state)

    def _emit_events(self, stored: list[tuple[EngineRequest, int, int]]) -> None:
        bs = self.args.block_size
        events = self.kv.events
        for req, lo, hi in stored:
            tokens = req.token_slice(lo * bs, hi * bs)
            parent = req.hashes[lo - 1] if lo else None
            lora_id = lora_key(req.lora) if req.lora else None
            events.stored(req.hashes[lo:hi], parent, tokens, bs, lora_id, req.lora)
        items = self.kv.drain_events()
        if items and self._publish is not None:
            self._publish(items)

    def _finish(self, req: EngineRequest, reason: str, now: float) -> None:
        req.finish_reason = reason
        self.sched.finish(req, reason, now)
        req.notify()
        self._work.set()

    # ---- introspection (admin endpoint, metrics) -------------------------------------------------------
    def kv_usage(self) -> float:
        return self.sched.kv_usage()

    def waiting_by_reason(self) -> tuple[int, int]:
        return self.sched.waiting_by_reason()

    def lora_state(self) -> tuple[list[str], list[str]]:
        return self.sched.lora_state()
