"""The scheduling core both workers run on (worker/scheduler.py), driven directly with a plain sequence."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetgate.worker.kvcache import Block, KVCache
from fleetgate.worker.metrics import EngineStats
from fleetgate.worker.scheduler import Limits, Scheduler, Status

BS = 4


@dataclass(eq=False)
class Seq:
    prompt: list[int]
    lora: str | None = None
    output: list[int] = field(default_factory=list)
    state: Status = Status.WAITING
    blocks: list[Block] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    computed: int = 0
    committed: int = 0
    cached_tokens: int = -1
    deferred: bool = False
    scheduled_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    max_tokens: int = 16
    params_n: int = 1
    arrival: float = 0.0

    @property
    def total_len(self) -> int:
        return len(self.prompt) + len(self.output)

    def token_slice(self, lo: int, hi: int) -> list[int]:
        return (self.prompt + self.output)[lo:hi]

    def append(self, token: int) -> None:
        self.output.append(token)


def scheduler(blocks: int = 64, max_seqs: int = 8, budget: int = 64, max_loras: int = 1) -> Scheduler[Seq]:
    stats = EngineStats("m", {}, max_loras, tool_parser=False)
    return Scheduler(KVCache(blocks, BS, True), Limits(max_seqs, budget, BS, max_loras), stats, lambda: 1.0)


def test_a_second_adapter_waits_for_a_slot_and_keeps_its_place() -> None:
    s = scheduler(max_loras=1)
    a1, b, a2 = Seq([1, 2, 3], lora="a"), Seq([4, 5, 6], lora="b"), Seq([7, 8, 9], lora="a")
    for q in (a1, b, a2):
        s.add(q)
    batch = s.schedule()
    assert [w.seq for w in batch] == [a1, a2]
    assert list(s.waiting) == [b] and b.deferred
    assert s.waiting_by_reason() == (0, 1)
    assert s.lora_state() == (["a"], ["b"])
    for q in (a1, a2):
        s.remove(q)
        s.finish(q, "stop", 2.0)
    assert [w.seq for w in s.schedule()] == [b]
    assert b.state is Status.RUNNING and not b.deferred


def test_the_newest_running_sequence_is_preempted_when_blocks_run_out() -> None:
    s = scheduler(blocks=2, budget=64)
    old, new = Seq([1, 2, 3]), Seq([4, 5, 6])
    s.add(old)
    s.add(new)
    # Two steps: each fills its one block (3 prompt tokens + 1 sampled), then samples a fifth token.
    for _ in range(2):
        batch = s.schedule()
        assert [w.seq for w in batch] == [old, new]
        for w in batch:
            s.computed(w)
            s.append(w.seq, 9, now=2.0)
    # The older one needs a second block and none is free, so the newest gives its own up.
    batch = s.schedule()
    assert [w.seq for w in batch] == [old]
    assert new.state is Status.WAITING and s.waiting[0] is new
    assert new.blocks == [] and new.computed == 0
    assert s.stats.preemptions == 1


def test_blocks_are_registered_only_as_far_as_the_hash_chain_goes() -> None:
    s = scheduler()
    q = Seq(list(range(10)))  # two full blocks hashed, a partial third
    s.add(q)
    (w,) = s.schedule()
    assert w.tokens == 10 and w.last
    # A chain one block short of what was computed (the embedded engine's guard): only the hashed block is
    # registered, under its own hash.
    full_chain = q.hashes
    q.hashes = full_chain[:1]
    assert s.computed(w) == (0, 1)
    assert q.committed == 1 and s.kv.longest_hit(full_chain) == 1
    q.hashes = full_chain
    w.tokens = 0
    assert s.computed(w) == (1, 2)
    assert q.committed == 2 and s.kv.longest_hit(full_chain) == 2
    # Nothing new filled: no span, nothing registered twice.
    w.tokens = 0
    assert s.computed(w) is None


def test_a_token_that_fills_a_block_extends_the_hash_chain_and_stamps_times() -> None:
    s = scheduler()
    q = Seq([1, 2, 3])
    s.add(q)
    assert q.hashes == []  # no full block yet
    (w,) = s.schedule()
    s.computed(w)
    s.append(q, 7, now=5.0)
    assert q.total_len == 4 and len(q.hashes) == 1
    assert (q.first_token_at, q.last_token_at) == (5.0, 5.0)
    s.append(q, 8, now=6.0)
    assert (q.first_token_at, q.last_token_at) == (5.0, 6.0)
    s.remove(q)
    s.finish(q, "stop", 7.0)
    assert q.state is Status.FINISHED and q.blocks == [] and s.running == []
