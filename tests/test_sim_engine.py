"""The engine model, driven step by step on a virtual clock (no HTTP, no wall time)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from fleetgate.sim.engine import Engine, EngineArgs, EngineRequest
from fleetgate.sim.profiles import load_profile
from fleetgate.tokenizer import IM_END, TextSampler, Tokenizer
from fleetgate.worker.metrics import EngineStats
from fleetgate.worker.scheduler import Status


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_engine(**overrides: Any) -> tuple[Engine, Clock, list[list[dict[str, Any]]]]:
    profile = load_profile("h200-llama-3.1-8b")
    args: dict[str, Any] = dict(
        max_model_len=4096, max_num_seqs=64, max_num_batched_tokens=2048, num_gpu_blocks=1024
    )
    args.update(overrides)
    published: list[list[dict[str, Any]]] = []
    clock = Clock()
    stats = EngineStats("m", {}, args.get("max_loras"), tool_parser=False)
    engine = Engine(profile, EngineArgs(**args), TextSampler(Tokenizer()), stats, published.append, clock)
    return engine, clock, published


def request(prompt_len: int, max_tokens: int, seed: int = 0, **kw: Any) -> EngineRequest:
    rng = random.Random(seed)
    prompt = [rng.randrange(256, 100000) for _ in range(prompt_len)]
    return EngineRequest(rid=str(seed), prompt=prompt, max_tokens=max_tokens, rng=rng, **kw)


def step(engine: Engine, clock: Clock) -> list[tuple[EngineRequest, int]]:
    batch = engine.schedule()
    clock.t += engine.step_seconds(batch)
    engine.postprocess(batch, clock.t)
    return [(s.seq, s.tokens) for s in batch]


def run_until_idle(engine: Engine, clock: Clock, limit: int = 100000) -> int:
    steps = 0
    while engine.running or engine.waiting:
        step(engine, clock)
        steps += 1
        assert steps < limit, "engine made no progress"
    return steps


def test_outputs_exactly_max_tokens_under_ignore_eos() -> None:
    engine, clock, _ = make_engine()
    reqs = [request(100, 7, seed=i) for i in range(3)]
    for r in reqs:
        engine.add(r)
    run_until_idle(engine, clock)
    for r in reqs:
        assert r.state == Status.FINISHED
        assert r.finish_reason == "length"
        assert len(r.output) == 7
        assert r.pending == r.output  # every token reached the channel


def test_natural_end_emits_eos_and_finishes_with_stop() -> None:
    engine, clock, _ = make_engine()
    r = request(50, 100, eos_after=5)
    engine.add(r)
    run_until_idle(engine, clock)
    assert r.finish_reason == "stop"
    assert len(r.output) == 6 and r.output[-1] == IM_END


def test_script_tokens_come_out_in_order() -> None:
    engine, clock, _ = make_engine()
    r = request(20, 10, script=(300, 301, 302), eos_after=3)
    engine.add(r)
    run_until_idle(engine, clock)
    assert r.output == [300, 301, 302, IM_END]


def test_chunked_prefill_respects_the_token_budget_and_keeps_decodes_going() -> None:
    engine, clock, _ = make_engine(max_num_batched_tokens=512)
    short = request(16, 50, seed=1)
    engine.add(short)
    step(engine, clock)  # short is now decoding
    long = request(2000, 4, seed=2)
    engine.add(long)
    chunks = []
    while long.computed < len(long.prompt):
        batch = dict((id(r), n) for r, n in step(engine, clock))
        assert sum(batch.values()) <= 512
        assert batch.get(id(short)) == 1  # the decode rides along every step
        chunks.append(batch[id(long)])
    assert chunks == [511, 511, 511, 467]
    assert not long.output[:-1]


def test_repeated_prompt_hits_the_prefix_cache_but_recomputes_its_last_block() -> None:
    engine, clock, published = make_engine()
    first = request(64, 2, seed=5)
    engine.add(first)
    run_until_idle(engine, clock)
    second = request(64, 2, seed=5)
    engine.add(second)
    batch = step(engine, clock)
    assert batch == [(second, 16)]  # 48 of 64 tokens cached: a hit stops one block short
    assert second.cached_tokens == 48
    stored = [e for batch in published for e in batch if e["type"] == "BlockStored"]
    assert stored[0]["block_hashes"] == first.hashes[:4] and stored[0]["parent_block_hash"] is None
    again = stored[-1]
    assert again["block_hashes"] == [first.hashes[3]]
    assert again["parent_block_hash"] == first.hashes[2]
    assert again["token_ids"] == first.prompt[48:64]
    assert engine.stats.prefix_hits == 48 and engine.stats.prefix_queries == 128


def test_tiny_kv_cache_preempts_fills_up_and_evicts() -> None:
    engine, clock, published = make_engine(num_gpu_blocks=64, max_model_len=1024, max_num_seqs=32)
    for i in range(12):
        engine.add(request(200, 300, seed=100 + i))
    peak = 0.0
    steps = 0
    while engine.running or engine.waiting:
        step(engine, clock)
        peak = max(peak, engine.kv_usage())
        steps += 1
        assert steps < 50000
    assert engine.stats.preemptions > 0
    assert peak > 0.95
    removed = [e for batch in published for e in batch if e["type"] == "BlockRemoved"]
    assert removed and all(set(e) == {"type", "block_hashes", "medium", "group_idx"} for e in removed)
    assert engine.stats.success["length"] == 12  # every request still finished, none lost


def test_a_third_lora_waits_while_two_are_active() -> None:
    engine, clock, _ = make_engine(enable_lora=True, max_loras=2)
    a, b, c = (request(32, 20, seed=i, lora=name) for i, name in enumerate(["a", "b", "c"]))
    for r in (a, b, c):
        engine.add(r)
    step(engine, clock)
    assert a.state == Status.RUNNING and b.state == Status.RUNNING
    assert c in engine.waiting and c.deferred
    assert engine.waiting_by_reason() == (0, 1)
    assert engine.lora_state() == (["a", "b"], ["c"])
    run_until_idle(engine, clock)
    assert c.finish_reason == "length"


def test_same_lora_shares_a_slot() -> None:
    engine, clock, _ = make_engine(enable_lora=True, max_loras=1)
    reqs = [request(32, 5, seed=i, lora="a") for i in range(3)]
    for r in reqs:
        engine.add(r)
    step(engine, clock)
    assert all(r.state == Status.RUNNING for r in reqs)


def test_max_num_seqs_bounds_the_batch() -> None:
    engine, clock, _ = make_engine(max_num_seqs=4)
    for i in range(10):
        engine.add(request(16, 10, seed=i))
    step(engine, clock)
    assert len(engine.running) == 4
    assert engine.waiting_by_reason() == (6, 0)


def test_abort_frees_blocks_and_counts_as_abort() -> None:
    engine, clock, _ = make_engine(num_gpu_blocks=100)
    r = request(320, 100)
    engine.add(r)
    step(engine, clock)
    assert engine.kv.num_free < 100
    engine.abort(r)
    assert engine.kv.num_free == 100
    assert r.finish_reason == "abort" and engine.stats.success["abort"] == 1
    assert not engine.running


def test_step_time_grows_with_batch_and_context() -> None:
    engine, _, _ = make_engine()
    profile = engine.profile.step
    one = profile.seconds(1, 1, 1000, 1000 * 1000, 0.0)
    many = profile.seconds(64, 64, 64000, 64 * 1000 * 1000, 0.0)
    long = profile.seconds(8, 8, 64000, 8 * 8000 * 8000, 0.0)
    assert one < many
    assert long > profile.seconds(8, 8, 8000, 8 * 1000 * 1000, 0.0)
    assert profile.seconds(1, 1, 1000, 1e6, 0.0, eager=True) == pytest.approx(one + profile.b_eager)


def test_metrics_follow_finished_requests() -> None:
    engine, clock, _ = make_engine()
    reqs = [request(40, 3, seed=i) for i in range(4)]
    for r in reqs:
        engine.add(r)
    run_until_idle(engine, clock)
    s = engine.stats
    assert s.generation_tokens == 12
    assert s.prompt_tokens == 160
    assert s.h_ttft.n == 4 and s.h_e2e.n == 4
    assert s.h_itl.n == 8  # two gaps per three-token answer
    text = s.render(engine)
    assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 4.0' in text
    assert 'vllm:generation_tokens_total{engine="0",model_name="m"} 12.0' in text


def test_calibration_check_rows_stay_within_tolerance() -> None:
    """The H200 profile reproduces the recorded runs it was not fitted on (virtual time, deterministic)."""
    from fleetgate.sim.calibrate import ROWS, TOLERANCE, predict

    profile = load_profile("h200-llama-3.1-8b")
    for row in ROWS:
        got = predict(profile, profile.step, row)
        for key, tol in TOLERANCE.items():
            assert abs(got[key] / getattr(row, key) - 1) <= tol, (row.name, key, got[key])
