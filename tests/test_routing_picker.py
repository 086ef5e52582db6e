"""Scorers, the picker's filters and strategies, the pool router's bookkeeping, and prompt hashing."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from fleetgate.api.gateway import routing_settings
from fleetgate.config import PoolConfig
from fleetgate.fleet.prefix_index import ApproxIndex
from fleetgate.fleet.prefix_keys import token_keys
from fleetgate.fleet.sessions import SessionTable
from fleetgate.fleet.state import Breaker, Endpoint, PoolState
from fleetgate.fleet.vllm_metrics import VLLMLoad
from fleetgate.routing.capacity import Saturation, queued
from fleetgate.routing.picker import Picker
from fleetgate.routing.prompt import PromptHasher
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.router import PoolRouter
from fleetgate.routing.scorers import LoadScorer, LoraScorer, PrefixScorer, SessionScorer
from fleetgate.routing.settings import RoutingSettings
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
    return PoolState("p", list(endpoints), ApproxIndex(65536), SessionTable(600))


def settings(**routing: object) -> RoutingSettings:
    """A pool's routing settings from the fleet file's `routing:` (defaults from config/)."""
    return routing_settings(
        PoolConfig.model_validate({"name": "p", "endpoints": ["http://x"], "routing": routing})
    )


def router(state: PoolState, **routing: object) -> PoolRouter:
    return PoolRouter(state, settings(**routing))


# ---- scorers -----------------------------------------------------------------------------------------------


def test_load_prefers_short_queues_and_counts_what_we_sent_since_the_scrape() -> None:
    idle, busy, queued = (
        endpoint("a", load(running=1)),
        endpoint("b", load(running=8)),
        endpoint("c", load(2, 3)),
    )
    scores = LoadScorer(pool(), settings()).score(RouteRequest(MODEL), [idle, busy, queued])
    assert scores[0] > scores[1] > scores[2]  # 3 waiting weigh more than 8 running
    idle.in_flight = idle.sent = 6  # sent since the scrape: vLLM will report them, we count them now
    assert LoadScorer(pool(), settings()).score(RouteRequest(MODEL), [idle])[0] < scores[2]


def test_load_counts_pending_prefill_tokens() -> None:
    a, b = endpoint("a", load()), endpoint("b", load())
    b.pending_prefill = 20_000
    s = LoadScorer(pool(), settings(prefill_tokens_per_request=2000)).score(RouteRequest(MODEL), [a, b])
    assert s[0] == 1.0 and s[1] == pytest.approx(1 / 11)


def test_prefix_scores_the_share_of_blocks_held_precise_where_events_flow() -> None:
    a, b = endpoint("a"), endpoint("b", kv_events="tcp://x:1")
    state = pool(a, b)
    ids = list(range(64))
    keys = token_keys(ids, 16)
    state.approx.record("a", keys[:2])
    state.approx.record("b", keys)  # the gateway sent it there...
    state.precise.stored("b", [1], None, ids[:16], 16, None)  # ...but b's cache holds one block
    scorer = PrefixScorer(state, settings())
    req = RouteRequest(MODEL, keys=keys)
    assert scorer.score(req, [a, b]) == [0.5, 1.0]  # b's events are not flowing: approximate
    b.kv_live = True
    assert scorer.score(req, [a, b]) == [0.5, 0.25] and state.cached(keys, [a, b]) == [2, 1]


def test_precise_falls_back_to_where_a_prompt_was_sent_when_no_cache_holds_any_of_it() -> None:
    """A prompt evicted everywhere, or one whose first prefill is still running (its events not yet in), is
    held by no live cache: where the gateway last sent it is then the one clue, and following it gives the
    prompt one home again instead of scattering its burst by load."""
    a, b = endpoint("a", kv_events="tcp://x:1"), endpoint("b", kv_events="tcp://x:2")
    a.kv_live = b.kv_live = True
    state = pool(a, b)
    ids = list(range(64))
    keys = token_keys(ids, 16)
    state.approx.record("b", keys)
    assert state.cached(keys, [a, b]) == [0, 4]
    state.precise.stored("a", [1], None, ids[:16], 16, None)  # once any live cache holds a block, it decides
    assert state.cached(keys, [a, b]) == [1, 0]
    assert state.cached(keys, [b]) == [0], "a question about one endpoint gets the answer the pool's pick got"


def test_lora_prefers_running_then_loaded_then_a_free_slot() -> None:
    running = endpoint("r", load(lora_running=("sql",), max_lora=2), adapters=frozenset({"sql"}))
    loaded = endpoint("l", load(max_lora=2), adapters=frozenset({"sql"}))
    free = endpoint("f", load(max_lora=2), adapters=frozenset({"x"}))
    full = endpoint("u", load(max_lora=1), adapters=frozenset({"x"}))
    scorer = LoraScorer(pool(), settings())
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
    scorer = SessionScorer(state, settings())
    assert scorer.score(RouteRequest(MODEL, session="conv-1"), [a, b]) == [0, 1]
    assert scorer.score(RouteRequest(MODEL, session="other"), [a, b]) == [0, 0]
    state.sessions.bind("old", "a", time.monotonic() - 10_000)
    assert scorer.score(RouteRequest(MODEL, session="old"), [a, b]) == [0, 0]  # expired


# ---- picker ------------------------------------------------------------------------------------------------


def test_filters_drop_unroutable_tried_and_other_models() -> None:
    ok, down, other = endpoint("ok"), endpoint("down"), endpoint("other")
    down.breaker = Breaker.OPEN
    other.models = frozenset({"another"})
    picker = Picker([], "max", settings().saturation)
    assert picker.candidates(RouteRequest(MODEL), [ok, down, other]) == [ok]
    assert picker.pick(RouteRequest(MODEL), [ok, down], exclude=frozenset({"ok"})) is None


def test_an_endpoint_whose_queue_is_much_longer_than_anothers_is_skipped() -> None:
    full, busy = endpoint("full", load(waiting=6)), endpoint("busy", load(running=50))
    hot = endpoint("hot", load(kv=0.95))  # a full KV cache is no reason to skip it: vLLM queues then
    state = pool(full, busy, hot)
    state.sessions.bind("s", "full", time.monotonic())
    r = router(state, scorers={"session": 10.0, "load": 1.0}, saturation={"max_imbalance": 5})
    lease = r.pick(RouteRequest(MODEL, session="s"), [full, busy, hot])
    assert lease is not None and lease.endpoint is hot  # the session yields to load (and moves there)
    lease.release()
    assert state.sessions.get("s", time.monotonic()) == "hot"
    state.sessions.bind("s", "full", time.monotonic())
    queued = endpoint("queued", load(waiting=4))
    lease = r.pick(RouteRequest(MODEL, session="s"), [full, queued])
    assert lease is not None and lease.endpoint is full  # both queue: no imbalance worth a move
    lease.release()
    full.sent_at_scrape = full.sent  # the next scrape counts what was sent
    assert Saturation(7, 0.8, 1.0, 5.0, 16).of(full, time.monotonic()) is False  # the flow queue's rule
    assert Saturation(5, 0.8, 1.0, 5.0, 16).of(hot, time.monotonic()) is True


def test_max_reports_the_deciding_scorer_and_breaks_ties_at_random() -> None:
    a, b = endpoint("a", load()), endpoint("b", load())
    state = pool(a, b)
    keys = token_keys(list(range(64)), 16)
    state.approx.record("b", keys)
    r = router(state)
    lease = r.pick(RouteRequest(MODEL, keys=keys), [a, b])
    assert lease is not None and lease.endpoint is b and lease.reason == "prefix"
    lease.release()
    b.sent_at_scrape = b.sent  # the next scrape counts what was sent
    picks: Counter[str] = Counter()
    for _ in range(200):
        choice = r.picker.pick(RouteRequest(MODEL), [a, b])
        assert choice is not None and choice[1] == "tie"
        picks[choice[0].name] += 1
    assert min(picks.values()) > 50


def test_round_robin_and_weighted_random() -> None:
    es = [endpoint(n, load()) for n in "abc"]
    rr = router(pool(*es), picker="round_robin")
    assert [rr.pick(RouteRequest(MODEL), es).endpoint.name for _ in range(6)] == list("abcabc")  # type: ignore[union-attr]
    es[0].in_flight = 1000
    sat = settings().saturation
    wr = Picker([("load", LoadScorer(pool(), settings()), 1.0)], "weighted_random", sat, random.Random(3))
    picks = Counter(wr.pick(RouteRequest(MODEL), es)[0].name for _ in range(300))  # type: ignore[index]
    assert picks["a"] < 10 and picks["b"] > 100 and picks["c"] > 100


def test_the_router_remembers_what_it_sent_where_and_a_lease_is_released_once() -> None:
    a, b = endpoint("a", load()), endpoint("b", load())
    state = pool(a, b)
    r = router(state, scorers={"prefix": 2.0, "load": 1.0, "session": 1.0})
    keys = token_keys(list(range(100)), 16)
    first = r.pick(RouteRequest(MODEL, keys=keys, tokens=100, session="s"), [a, b])
    assert first is not None
    chosen = first.endpoint
    assert chosen.pending_prefill == 100 and chosen.in_flight == 1 and first.hit_ratio == 0
    again = r.pick(RouteRequest(MODEL, keys=keys, tokens=100), [a, b])
    assert again is not None and again.endpoint is chosen and again.reason == "prefix"
    assert again.hit_ratio == 1.0 and chosen.in_flight == 2
    assert chosen.pending_prefill == 100 + 100 - 6 * 16  # the second one's cached blocks are not pending
    first.started()  # its first byte
    assert chosen.pending_prefill == 4 and chosen.in_flight == 2
    first.release()
    first.release()  # once only
    assert chosen.pending_prefill == 4 and chosen.in_flight == 1
    again.release()
    assert chosen.pending_prefill == 0 and chosen.in_flight == 0
    assert state.sessions.get("s", time.monotonic()) == chosen.name


@pytest.mark.parametrize("picker", ["round_robin", "max"])
def test_a_pick_no_scorer_decided_counts_only_the_uncached_prompt_as_pending(picker: str) -> None:
    """Round robin and a lone candidate consult no scorer; the lease still asks the index what is cached."""
    a = endpoint("a", load())
    state = pool(a)
    keys = token_keys(list(range(160)), 16)  # 10 blocks
    state.approx.record("a", keys[:6])
    lease = router(state, picker=picker).pick(RouteRequest(MODEL, keys=keys, tokens=170), [a])
    assert lease is not None
    assert lease.reason == ("round_robin" if picker == "round_robin" else "only_choice")
    assert lease.pending == a.pending_prefill == 170 - 6 * 16
    assert lease.hit_ratio == pytest.approx(0.6)


def test_load_scorer_honours_the_operators_kv_usage_threshold() -> None:
    warm, cool = endpoint("warm", load(kv=0.6)), endpoint("cool", load(kv=0.3))
    req = RouteRequest(MODEL)
    default = LoadScorer(pool(), settings()).score(req, [warm, cool])
    assert default[0] == default[1] == 1.0  # both below 0.8: the KV term says nothing
    strict = LoadScorer(pool(), settings(saturation={"max_kv_usage": 0.5})).score(req, [warm, cool])
    assert strict[0] < strict[1] == 1.0  # warm is past 0.5: preemption is near there
    assert LoadScorer(pool(), settings(saturation={"max_kv_usage": 1.0})).score(req, [warm]) == [1.0]


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


def test_a_cold_endpoint_is_not_herded_onto_between_scrapes() -> None:
    """Requests that ended since the last scrape must not hide the ones sent since: every pick until the
    next scrape would see the same least-loaded endpoint."""
    a, b, c = endpoint("a"), endpoint("b", load(running=4)), endpoint("c", load(running=4))
    state = pool(a, b, c)
    r = router(state, scorers={"load": 1.0})
    earlier = [r.pick(RouteRequest(MODEL), [a]) for _ in range(3)]
    a.load, a.load_at, a.sent_at_scrape = load(running=3), time.monotonic(), a.sent  # the scrape sees them
    for held in earlier:
        assert held is not None
        held.release()  # ...and they end before the next one
    picks = []
    for _ in range(3):
        lease = r.pick(RouteRequest(MODEL), [a, b, c])
        assert lease is not None
        picks.append(lease.endpoint.name)
    assert picks[0] == "a" and sorted(picks[1:]) == ["b", "c"]


def test_a_request_sent_and_finished_since_the_scrape_no_longer_counts_as_queued() -> None:
    """A conversation's next turn must find its endpoint as the last scrape left it once the previous turn is
    over: a finished request is neither in vLLM's queue nor in the scrape."""
    a = endpoint("a", load(running=0))
    state = pool(a)
    r = router(state, scorers={"load": 1.0})
    assert queued(a, load(running=0)) == 0
    first = r.pick(RouteRequest(MODEL), [a])
    second = r.pick(RouteRequest(MODEL), [a])
    assert first is not None and second is not None
    assert queued(a, load(running=0)) == 2
    first.release()
    first.release()  # once only
    assert queued(a, load(running=0)) == 1
    a.sent_at_scrape = a.sent  # a scrape: it sees `second` itself
    second.release()
    assert queued(a, load(running=0)) == 0


def test_a_cache_under_pressure_spreads_a_hot_prefix_and_affinity_holds_when_all_are_busy() -> None:
    """A hot prefix piles up at its endpoint until its queue is `max_imbalance` longer than another's; then it
    spreads there, and from then on both hold it. When every queue is long, it stays put: moving it would
    trade a cache hit for a full prefill elsewhere."""
    es = [endpoint(n, load(running=8, kv=0.95)) for n in "abcd"]
    state = pool(*es)
    hot = token_keys(list(range(3200)), 16)  # 200 blocks
    state.approx.record("a", hot)
    r = router(state)
    homes = []
    for _ in range(48):  # no scrape in between: our own sends make the queues
        lease = r.pick(RouteRequest(MODEL, keys=hot, tokens=3300), es)
        assert lease is not None
        homes.append(lease.endpoint.name)
    assert homes[:16] == ["a"] * 16  # affinity first, whatever the KV use, up to max_imbalance (16)
    assert len(set(homes)) >= 3 and homes.count("a") < 32  # then it spread
    assert all(state.cached(hot, [state.endpoints[i]])[0] == 200 for i in range(4) if es[i].name in homes)
    for e in es:  # everyone is as busy as a: affinity holds
        e.load, e.sent_at_scrape = load(running=8, waiting=20, kv=0.99), e.sent
    lease = r.pick(RouteRequest(MODEL, keys=token_keys([7, *range(3199)], 16), tokens=3300), es)
    assert lease is not None
    owner = lease.endpoint
    for _ in range(4):
        again = r.pick(RouteRequest(MODEL, keys=token_keys([7, *range(3199)], 16), tokens=3300), es)
        assert again is not None and again.endpoint is owner


def test_the_approximate_index_is_sized_in_the_engines_tokens_not_ours() -> None:
    """Text keys (`tokenizer: none`) are 64-byte blocks; a tokenizer that packs text twice as densely as the
    estimate leaves room in the KV cache for half as many of them."""
    a = endpoint("a", load())  # vLLM reports 1,000 blocks
    state = pool(a)
    r = router(state)
    r.track_capacity(a)
    keys = token_keys(list(range(16 * 1200)), 16)
    state.approx.record("a", keys)
    assert state.approx.blocks("a") == 1000  # sized like the cache while nothing is known
    request = RouteRequest(MODEL, keys=keys[:60], tokens=1000)
    for _ in range(5):
        r.observed(request, {"prompt_tokens": 2000, "completion_tokens": 1})
    r.observed(RouteRequest(MODEL, keys=keys[:60], tokens=1000), None)  # no usage: nothing learnt
    assert r.tokens_per_estimated == 2.0
    r.track_capacity(a)
    state.approx.record("a", keys)
    assert state.approx.blocks("a") == 500


def test_affinity_yields_at_max_imbalance_not_where_the_flow_queue_starts_holding() -> None:
    """The flow queue holds requests once every endpoint has `max_waiting` queued; a prefix leaves its home
    only when that home's queue is `max_imbalance` longer than the shortest: moving costs a full prefill
    elsewhere and evicts what that cache held for others, so it takes more than the gate."""
    home, idle = endpoint("home", load(waiting=10)), endpoint("idle", load())
    state = pool(home, idle)
    keys = token_keys(list(range(640)), 16)
    state.approx.record("home", keys)
    now = time.monotonic()
    for routing, expected in [({}, "home"), ({"saturation": {"max_imbalance": 8}}, "idle")]:
        r = router(state, **routing)
        assert r.saturation.of(home, now)  # the gate (max_waiting 5) counts it full either way
        lease = r.pick(RouteRequest(MODEL, keys=keys, tokens=640), [home, idle])
        assert lease is not None and lease.endpoint.name == expected, routing
        lease.release()
        home.sent_at_scrape = home.sent
        idle.sent_at_scrape = idle.sent
