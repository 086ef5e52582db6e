"""Scorers, the picker's filters and strategies, the pool router's bookkeeping, and prompt hashing."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from fleetgate.config import RoutingConfig
from fleetgate.fleet.prefix_keys import token_keys
from fleetgate.fleet.state import Breaker, Endpoint, PoolState
from fleetgate.fleet.vllm_metrics import VLLMLoad
from fleetgate.routing.picker import Picker, Saturation
from fleetgate.routing.prompt import PromptHasher
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.router import PoolRouter
from fleetgate.routing.scorers import LoadScorer, LoraScorer, PrefixScorer, ScorerSettings, SessionScorer
from fleetgate.tokenizer import Tokenizer, render_chat

MODEL = "m"


def load(
    running: float = 0,
    waiting: float = 0,
    kv: float = 0.0,
    lora_running: tuple[str, ...] = (),
    max_lora: int | None = None,
) -> VLLMLoad:
    return VLLMLoad(running, waiting, 0, kv, 0, 0, True, 0, 16, 1000, lora_running, (), max_lora)


def endpoint(name: str, reading: VLLMLoad | None = None, **kw: object) -> Endpoint:
    e = Endpoint(name, f"http://{name}", "p", models=frozenset({MODEL}), **kw)  # type: ignore[arg-type]
    e.probe_ok()
    if reading is not None:
        e.load, e.load_at = reading, time.monotonic()
    return e


def pool(*endpoints: Endpoint) -> PoolState:
    return PoolState("p", list(endpoints))


def router(state: PoolState, **routing: object) -> PoolRouter:
    return PoolRouter(state, RoutingConfig.model_validate(routing), stale_after=1.0, stall_after=3.0)


# ---- scorers -----------------------------------------------------------------------------------------------


def test_load_prefers_short_queues_and_counts_what_we_sent_since_the_scrape() -> None:
    idle, busy, queued = (
        endpoint("a", load(running=1)),
        endpoint("b", load(running=8)),
        endpoint("c", load(2, 3)),
    )
    scores = LoadScorer(pool(), ScorerSettings()).score(RouteRequest(MODEL), [idle, busy, queued])
    assert scores[0] > scores[1] > scores[2]  # 3 waiting weigh more than 8 running
    idle.in_flight = 6  # sent since the scrape: vLLM will report them, we count them now
    assert LoadScorer(pool(), ScorerSettings()).score(RouteRequest(MODEL), [idle])[0] < scores[2]


def test_load_counts_pending_prefill_tokens() -> None:
    a, b = endpoint("a", load()), endpoint("b", load())
    b.pending_prefill = 20_000
    s = LoadScorer(pool(), ScorerSettings(prefill_tokens_per_request=2000)).score(RouteRequest(MODEL), [a, b])
    assert s[0] == 1.0 and s[1] == pytest.approx(1 / 11)


def test_prefix_scores_the_share_of_blocks_held_precise_where_events_flow() -> None:
    a, b = endpoint("a"), endpoint("b", kv_events="tcp://x:1")
    state = pool(a, b)
    ids = list(range(64))
    keys = token_keys(ids, 16)
    state.approx.record("a", keys[:2])
    state.approx.record("b", keys)  # the gateway sent it there...
    state.precise.stored("b", [1], None, ids[:16], 16, None)  # ...but b's cache holds one block
    scorer = PrefixScorer(state, ScorerSettings(precise=True))
    req = RouteRequest(MODEL, keys=keys)
    assert scorer.score(req, [a, b]) == [0.5, 1.0]  # b's events are not flowing: approximate
    b.kv_live = True
    req = RouteRequest(MODEL, keys=keys)
    assert scorer.score(req, [a, b]) == [0.5, 0.25] and req.hits == {"a": 2, "b": 1}


def test_lora_prefers_running_then_loaded_then_a_free_slot() -> None:
    running = endpoint("r", load(lora_running=("sql",), max_lora=2), adapters=frozenset({"sql"}))
    loaded = endpoint("l", load(max_lora=2), adapters=frozenset({"sql"}))
    free = endpoint("f", load(max_lora=2), adapters=frozenset({"x"}))
    full = endpoint("u", load(max_lora=1), adapters=frozenset({"x"}))
    scorer = LoraScorer(pool(), ScorerSettings())
    assert scorer.score(RouteRequest(MODEL, adapter="sql"), [running, loaded, free, full]) == [
        1,
        0.75,
        0.5,
        0,
    ]
    assert scorer.score(RouteRequest(MODEL), [running, full]) == [1, 1]


def test_session_scores_the_bound_endpoint() -> None:
    a, b = endpoint("a"), endpoint("b")
    state = pool(a, b)
    state.sessions.bind("conv-1", "b", time.monotonic())
    scorer = SessionScorer(state, ScorerSettings())
    assert scorer.score(RouteRequest(MODEL, session="conv-1"), [a, b]) == [0, 1]
    assert scorer.score(RouteRequest(MODEL, session="other"), [a, b]) == [0, 0]
    state.sessions.bind("old", "a", time.monotonic() - 10_000)
    assert scorer.score(RouteRequest(MODEL, session="old"), [a, b]) == [0, 0]  # expired


# ---- picker ------------------------------------------------------------------------------------------------


def test_filters_drop_unroutable_tried_and_other_models() -> None:
    ok, down, other = endpoint("ok"), endpoint("down"), endpoint("other")
    down.breaker = Breaker.OPEN
    other.models = frozenset({"another"})
    picker = Picker([])
    assert picker.candidates(RouteRequest(MODEL), [ok, down, other]) == [ok]
    assert picker.pick(RouteRequest(MODEL), [ok, down], exclude=frozenset({"ok"})) is None


def test_saturated_endpoints_are_skipped_unless_all_are() -> None:
    full, free = endpoint("full", load(waiting=6)), endpoint("free", load(running=50))
    hot = endpoint("hot", load(kv=0.95))
    state = pool(full, free, hot)
    state.sessions.bind("s", "full", time.monotonic())
    r = router(state, scorers={"session": 10.0, "load": 1.0})
    req = RouteRequest(MODEL, session="s")
    assert r.pick(req, [full, free, hot]) is free  # the session yields to load (and moves there)
    state.sessions.bind("s", "full", time.monotonic())
    assert r.pick(RouteRequest(MODEL, session="s"), [full, hot]) is full  # all saturated: scores decide
    assert Saturation(max_waiting=7).of(full, time.monotonic()) is False


def test_max_reports_the_deciding_scorer_and_breaks_ties_at_random() -> None:
    a, b = endpoint("a", load()), endpoint("b", load())
    state = pool(a, b)
    keys = token_keys(list(range(64)), 16)
    state.approx.record("b", keys)
    r = router(state)
    req = RouteRequest(MODEL, keys=keys)
    assert r.pick(req, [a, b]) is b and req.reason == "prefix"
    picks: Counter[str] = Counter()
    for _ in range(200):
        req = RouteRequest(MODEL)
        picks[r.picker.pick(req, [a, b]).name] += 1  # type: ignore[union-attr]
        assert req.reason == "tie"
    assert min(picks.values()) > 50


def test_round_robin_and_weighted_random() -> None:
    es = [endpoint(n, load()) for n in "abc"]
    rr = router(pool(*es), picker="round_robin")
    assert [rr.pick(RouteRequest(MODEL), es).name for _ in range(6)] == list("abcabc")  # type: ignore[union-attr]
    es[0].in_flight = 1000
    wr = Picker(
        [("load", LoadScorer(pool(), ScorerSettings()), 1.0)], "weighted_random", rng=random.Random(3)
    )
    picks = Counter(wr.pick(RouteRequest(MODEL), es).name for _ in range(300))  # type: ignore[union-attr]
    assert picks["a"] < 10 and picks["b"] > 100 and picks["c"] > 100


def test_the_router_remembers_what_it_sent_where() -> None:
    a, b = endpoint("a", load()), endpoint("b", load())
    state = pool(a, b)
    r = router(state, scorers={"prefix": 2.0, "load": 1.0, "session": 1.0})
    keys = token_keys(list(range(100)), 16)
    first = RouteRequest(MODEL, keys=keys, tokens=100, session="s")
    chosen = r.pick(first, [a, b])
    assert chosen is not None and chosen.pending_prefill == 100
    again = RouteRequest(MODEL, keys=keys, tokens=100)
    assert r.pick(again, [a, b]) is chosen and again.reason == "prefix"
    assert chosen.pending_prefill == 100 + 100 - 6 * 16  # the second one's cached blocks are not pending
    r.prefill_done(first, chosen)
    r.prefill_done(first, chosen)  # once only
    assert chosen.pending_prefill == 4
    assert state.sessions.get("s", time.monotonic()) == chosen.name


# ---- prompt hashing ----------------------------------------------------------------------------------------


def test_builtin_keys_are_the_simulators_token_blocks() -> None:
    hasher = PromptHasher("builtin")
    messages = [
        {"role": "system", "content": "You are terse. " * 40},
        {"role": "user", "content": "Hi there"},
    ]
    info = hasher.info("chat", {"messages": messages}, None)
    assert info is not None
    ids = render_chat(Tokenizer(), messages)
    assert info.keys == token_keys(ids, 16) and info.tokens == len(ids)
    prompt = list(range(40))
    done = hasher.info("completions", {"prompt": prompt}, "sql")
    assert done is not None and done.keys == token_keys(prompt, 16, seed=__import__("zlib").crc32(b"sql"))


def test_text_keys_share_a_prefix_when_the_conversation_does() -> None:
    hasher = PromptHasher("none")
    system = {"role": "system", "content": "Answer in French. " * 30}
    a = hasher.info("chat", {"messages": [system, {"role": "user", "content": "One? " * 40}]}, None)
    b = hasher.info("chat", {"messages": [system, {"role": "user", "content": "Two? " * 40}]}, None)
    assert a is not None and b is not None
    shared = len("<|im_start|>system\n" + system["content"] + "<|im_end|>\n") // 64
    assert a.keys[:shared] == b.keys[:shared] and a.keys[shared + 1 :] != b.keys[shared + 1 :]
    assert hasher.info("completions", {"prompt": "x" * 640}, None).keys  # type: ignore[union-attr]
    assert hasher.info("embeddings", {"input": "x"}, None) is None


def test_multi_turn_hashing_is_incremental(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher = PromptHasher("none")
    hashed: list[int] = []
    extend = hasher.__class__._turn

    def counting(self: PromptHasher, role: str, text: str) -> bytes:
        data = extend(self, role, text)
        hashed.append(len(data))
        return data

    monkeypatch.setattr(PromptHasher, "_turn", counting)
    history = [{"role": "system", "content": "s" * 5000}, {"role": "user", "content": "u1" * 500}]
    first = hasher.info("chat", {"messages": history}, None)
    assert first is not None and sum(hashed) > 6000 and first.session is None
    hashed.clear()
    history += [{"role": "assistant", "content": "a1" * 100}, {"role": "user", "content": "u2"}]
    second = hasher.info("chat", {"messages": history}, None)
    assert second is not None and sum(hashed) < 500  # only the new turns
    assert second.keys[: len(first.keys)] == first.keys
    assert second.session is not None
    replay = PromptHasher("none").info("chat", {"messages": history}, None)
    assert replay is not None and replay.keys == second.keys  # the same keys as hashing from scratch
