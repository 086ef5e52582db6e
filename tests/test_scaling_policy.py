"""The scaling policy as arithmetic: scenario tables, flapping noise, and properties over random loads."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.scaling.autoscaler import (
    Decision,
    PoolObservation,
    ScalingPolicy,
    Sleep,
    Start,
    Stop,
    Wake,
    WorkerView,
)
from fleetgate.scaling.spec import PoolSpec, RuleKind, ScalingRule, WorkerSpec
from fleetgate.scaling.worker import WorkerState

R, S, SL, D = WorkerState.READY, WorkerState.STARTING, WorkerState.SLEEPING, WorkerState.DRAINING


def worker_spec(**changes: object) -> WorkerSpec:
    base = WorkerSpec(
        engine="sim",
        model="h200-llama-3.1-8b",
        served_model_name="llama",
        engine_args=(),
        gpus_per_worker=0,
        sleep=False,
        sleep_level=1,
        env={},
        hf_token_env=None,
        hf_token_file=None,
        offline=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def pool_spec(**changes: object) -> PoolSpec:
    """A pool with round numbers; tests change what they are about."""
    base = PoolSpec(
        name="p",
        worker=worker_spec(),
        min_workers=0,
        max_workers=4,
        idle_timeout=100.0,
        rule=ScalingRule(RuleKind.REQUEST_COUNT, 4),
        stabilization_window=30.0,
        scale_up_limit=4,
        scale_up_period=10.0,
        backoff_base=1.0,
        backoff_cap=8.0,
        max_failures=3,
        startup_timeout=60.0,
        max_hold=60.0,
        drain_deadline=5.0,
        stop_grace=2.0,
        interval=1.0,
        gpus=None,
        log_dir="logs",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def obs(
    now: float, workers: Sequence[tuple[WorkerState, int]] = (), queued: int = 0, wait: float = 0.0
) -> PoolObservation:
    views = [WorkerView(f"w{i}", state, n) for i, (state, n) in enumerate(workers)]
    return PoolObservation(now=now, queued=queued, oldest_wait=wait, workers=views)


def queue_delay(seconds: float) -> ScalingRule:
    return ScalingRule(RuleKind.QUEUE_DELAY, seconds)


# Each row: pool changes, observation, expected desired count, expected actions. A fresh policy each time,
# so the window holds only this observation.
SCENARIOS: list[tuple[str, dict[str, object], PoolObservation, int, tuple[object, ...]]] = [
    ("idle pool stays at zero", {}, obs(0), 0, ()),
    ("min_workers kept", {"min_workers": 2}, obs(0), 2, (Start(2),)),
    ("a queued request at zero starts one", {}, obs(0, queued=1), 1, (Start(1),)),
    ("request_count: ceil(10 / 4)", {}, obs(0, [(R, 6)], queued=4), 3, (Start(2),)),
    ("bounded by max_workers", {}, obs(0, [(R, 8)], queued=40), 4, (Start(3),)),
    ("starting workers count", {}, obs(0, [(R, 4), (S, 0)], queued=4), 2, ()),
    (
        "concurrency: ceil(9 / 3)",
        {"rule": ScalingRule(RuleKind.CONCURRENCY, 3)},
        obs(0, [(R, 9)]),
        3,
        (Start(2),),
    ),
    (
        "queue_delay at zero starts at once",
        {"rule": queue_delay(5)},
        obs(0, queued=1, wait=0.1),
        1,
        (Start(1),),
    ),
    (
        "queue_delay: short wait, no change",
        {"rule": queue_delay(5)},
        obs(0, [(R, 3)], queued=2, wait=1),
        1,
        (),
    ),
    (
        "queue_delay: long wait adds one",
        {"rule": queue_delay(5)},
        obs(0, [(R, 3)], queued=2, wait=6),
        2,
        (Start(1),),
    ),
    (
        "queue_delay: one at a time while one starts",
        {"rule": queue_delay(5)},
        obs(0, [(R, 3), (S, 0)], queued=2, wait=9),
        2,
        (),
    ),
    (
        "sleepers wake before anything starts",
        {},
        obs(0, [(SL, 0), (SL, 0)], queued=5),
        2,
        (Wake("w0"), Wake("w1")),
    ),
    ("wake, then start the rest", {}, obs(0, [(SL, 0)], queued=9), 3, (Wake("w0"), Start(2))),
    ("sleepers hold slots", {"max_workers": 2}, obs(0, [(R, 4), (SL, 0)], queued=8), 2, (Wake("w1"),)),
    ("draining ones hold slots", {"max_workers": 2}, obs(0, [(R, 4), (D, 1)], queued=8), 2, ()),
    ("scale-up rate limit", {"scale_up_limit": 2}, obs(0, queued=16), 4, (Start(2),)),
    ("min above the rule", {"min_workers": 1}, obs(0, [(R, 0)]), 1, ()),
]


@pytest.mark.parametrize(
    ("changes", "observation", "desired", "actions"),
    [row[1:] for row in SCENARIOS],
    ids=[row[0] for row in SCENARIOS],
)
def test_scenarios(
    changes: dict[str, object], observation: PoolObservation, desired: int, actions: tuple[object, ...]
) -> None:
    decision = ScalingPolicy(pool_spec(**changes)).decide(observation)
    assert (decision.desired, decision.actions) == (desired, actions)


def run(policy: ScalingPolicy, steps: Sequence[PoolObservation]) -> list[Decision]:
    return [policy.decide(o) for o in steps]


def test_scale_down_waits_for_the_window_and_picks_the_least_busy() -> None:
    policy = ScalingPolicy(pool_spec(stabilization_window=30, idle_timeout=1000))
    busy = [(R, 4), (R, 4), (R, 4)]
    assert policy.decide(obs(0, busy)).desired == 3
    light = [(R, 2), (R, 0), (R, 1)]  # 3 streams: one worker's worth
    inside = run(policy, [obs(t, light) for t in (10, 20, 29)])
    assert all(d.desired == 3 and not d.actions for d in inside)
    after = policy.decide(obs(30, light))
    assert after.desired == 1
    assert after.actions == (Stop("w1"), Stop("w2"))  # fewest in-flight first


def test_idle_timeout_scales_to_zero_and_sleep_replaces_stop() -> None:
    for sleep, verb in ((False, Stop), (True, Sleep)):
        policy = ScalingPolicy(
            pool_spec(worker=worker_spec(sleep=sleep), idle_timeout=60, stabilization_window=10)
        )
        policy.decide(obs(0, [(R, 1)]))
        # The last request ended at 0; the worker is kept until 60 s later, then goes.
        assert all(d.desired == 1 for d in run(policy, [obs(t, [(R, 0)]) for t in (5, 30, 59)]))
        assert policy.decide(obs(60, [(R, 0)])).actions == (verb("w0"),)


def test_rate_limit_spreads_starts_over_periods() -> None:
    policy = ScalingPolicy(pool_spec(scale_up_limit=1, scale_up_period=10, max_workers=3))
    assert policy.decide(obs(0, queued=12)).actions == (Start(1),)
    assert policy.decide(obs(5, [(S, 0)], queued=12)).actions == ()
    assert policy.decide(obs(10, [(S, 0)], queued=12)).actions == (Start(1),)


def test_no_flapping_under_noisy_load() -> None:
    """A load that swings between 1 and 3 workers' worth every few seconds: the pool rises once and holds."""
    policy = ScalingPolicy(pool_spec(stabilization_window=30))
    rng = random.Random(7)
    workers: list[tuple[WorkerState, int]] = []
    changes = 0
    last = None
    for step in range(300):  # 5 minutes at 1 s ticks
        load = rng.choice((2, 4, 6, 9, 12))
        per = load // max(len(workers), 1)
        workers = [(R, per)] * len(workers)
        d = policy.decide(obs(float(step), workers, queued=0 if workers else load))
        for a in d.actions:
            if isinstance(a, Start):
                workers += [(R, 0)] * a.count
            elif isinstance(a, Stop):
                workers.pop()
        if last is not None and d.desired != last:
            changes += 1
        last = d.desired
    assert last == 3
    assert changes <= 2  # up to 3 early on, never down while the peaks keep coming


@st.composite
def load_traces(draw: st.DrawFn) -> tuple[PoolSpec, list[PoolObservation]]:
    spec = pool_spec(
        min_workers=draw(st.integers(0, 2)),
        max_workers=draw(st.integers(2, 6)),
        stabilization_window=draw(st.floats(0, 50)),
        idle_timeout=draw(st.floats(0, 100)),
        rule=draw(
            st.sampled_from(
                [ScalingRule(RuleKind.REQUEST_COUNT, 3), ScalingRule(RuleKind.CONCURRENCY, 2), queue_delay(4)]
            )
        ),
        scale_up_limit=draw(st.integers(1, 4)),
    )
    now = 0.0
    steps = []
    for _ in range(draw(st.integers(1, 40))):
        now += draw(st.floats(0.1, 20))
        states = draw(st.lists(st.sampled_from([R, S, SL, D]), max_size=6))
        workers = [(s, draw(st.integers(0, 10)) if s is R else 0) for s in states]
        queued = draw(st.integers(0, 30))
        steps.append(obs(now, workers, queued=queued, wait=draw(st.floats(0, 30)) if queued else 0.0))
    return spec, steps


@given(load_traces())
@settings(max_examples=200, deadline=None)
def test_desired_stays_within_bounds_and_never_drops_inside_the_window(
    trace: tuple[PoolSpec, list[PoolObservation]],
) -> None:
    spec, steps = trace
    policy = ScalingPolicy(spec)
    history: list[tuple[float, int]] = []
    for o in steps:
        d = policy.decide(o)
        assert spec.min_workers <= d.desired <= spec.max_workers
        history.append((o.now, min(max(d.raw, spec.min_workers), spec.max_workers)))
        # Whatever any observation inside the window asked for, the pool still wants.
        recent = [r for t, r in history if t == o.now or t > o.now - spec.stabilization_window]
        assert d.desired >= max(recent)
        starts = sum(a.count for a in d.actions if isinstance(a, Start))
        wakes = sum(1 for a in d.actions if isinstance(a, Wake))
        assert starts + wakes <= spec.scale_up_limit
        processes = sum(1 for w in o.workers if w.state in (R, S, SL, D))
        assert processes + starts <= max(spec.max_workers, processes)
        victims = [a.worker_id for a in d.actions if isinstance(a, Stop | Sleep)]
        assert all(next(w for w in o.workers if w.id == v).state is R for v in victims)
