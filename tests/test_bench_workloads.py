"""Workloads and prompt sizing of `fleetgate bench`: sizes, distributions, shapes, determinism, settings."""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from fleetgate.bench.records import RequestSpec
from fleetgate.bench.sizing import Sizer, calibration_sample
from fleetgate.bench.workloads import (
    MAX_LENGTH,
    MultiTurnWorkload,
    Tenant,
    TraceWorkload,
    Workload,
    WorkloadConfigError,
    WorkloadSettings,
    chat_tokens,
    length_dist,
    make_workload,
)
from fleetgate.tokenizer import render_chat
from fleetgate.worker.requests import ChatCompletionRequest, CompletionRequest, ResponsesRequest, validate

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def sizer() -> Sizer:
    return Sizer()


def within(actual: int, planned: int) -> bool:
    return abs(actual - planned) <= max(2, 0.02 * planned)


def take(workload: Workload, n: int) -> list[RequestSpec]:
    return [workload.next_request() for _ in range(n)]


def check_wire(spec: RequestSpec) -> None:
    """The body is what the target accepts once the runner adds model and stream, and never carries them."""
    assert "model" not in spec.body
    assert "stream" not in spec.body
    body = {**spec.body, "model": "m"}
    if spec.api == "chat":
        validate(ChatCompletionRequest, body)
    elif spec.api == "completions":
        validate(CompletionRequest, body)
    else:
        validate(ResponsesRequest, body)


def user_text(spec: RequestSpec) -> str:
    if spec.api == "chat":
        return str(spec.body["messages"][-1]["content"])
    if spec.api == "completions":
        return str(spec.body["prompt"])
    value = spec.body["input"]
    return value if isinstance(value, str) else str(value[-1]["content"])


# ---- Sizer ------------------------------------------------------------------------------------------------


def test_pools_concatenate_exactly(sizer: Sizer) -> None:
    for pool in (sizer.english, sizer.chinese):
        assert sizer.tokenizer.count(pool.text) == pool.total


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_text_has_exactly_the_asked_tokens_at_ratio_one(sizer: Sizer, lang: str) -> None:
    rng = random.Random(1)
    make = sizer.text if lang == "en" else sizer.text_zh
    sizes = [*range(0, 40), 100, 511, 2048, 8000, sizer.english.total + 777, 3 * sizer.chinese.total + 5]
    for n in sizes:
        text = make(n, rng)
        assert sizer.count(text) == n, (n, text[:80])


@pytest.mark.parametrize("ratio", [0.8, 1.27, 2.5])
def test_text_hits_target_tokens_through_the_ratio(ratio: float) -> None:
    sizer = Sizer(ratio=ratio)
    rng = random.Random(2)
    for n in [1, 5, 17, 100, 512, 3000, 20000]:
        for make in (sizer.text, sizer.text_zh):
            assert within(sizer.count(make(n, rng)), n), (ratio, n)


def test_text_reads_like_prose(sizer: Sizer) -> None:
    text = sizer.text(400, random.Random(3))
    assert text[0].isupper()
    assert ". " in text and ", " in text
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) > 250 and all(len(w) < 15 for w in words)
    zh = sizer.text_zh(400, random.Random(3))
    assert len(CJK.findall(zh)) > 250
    assert "，" in zh and "。" in zh


def test_text_is_deterministic_per_rng_and_prompts_share_no_prefix(sizer: Sizer) -> None:
    for make in (sizer.text, sizer.text_zh):
        assert make(300, random.Random(9)) == make(300, random.Random(9))
        rng = random.Random(10)
        heads = [make(300, rng)[:12] for _ in range(300)]
        assert len(set(heads)) >= 295


def test_ids_exact_in_range_and_deterministic() -> None:
    sizer = Sizer(vocab_size=50_000)
    rng = random.Random(4)
    for n in [0, 1, 7, 8, 9, 1000, 70_000, 200_000]:
        ids = sizer.ids(n, rng)
        assert len(ids) == n
        assert all(1000 <= i < 49_000 for i in ids)
    assert sizer.ids(500, random.Random(5)) == sizer.ids(500, random.Random(5))
    assert sizer.ids(500, random.Random(5)) != sizer.ids(500, random.Random(6))


def test_sizer_rejects_bad_arguments(sizer: Sizer) -> None:
    with pytest.raises(ValueError, match="ratio"):
        Sizer(ratio=0)
    with pytest.raises(ValueError, match="vocab_size"):
        Sizer(vocab_size=2000)
    with pytest.raises(ValueError, match="tokens"):
        sizer.text(-1, random.Random(0))


def test_calibration_sample_is_fixed_mixed_and_about_2000_tokens(sizer: Sizer) -> None:
    sample = calibration_sample()
    assert sample == calibration_sample()
    assert 1800 <= sizer.count(sample) <= 2400
    assert CJK.search(sample) and re.search(r"[A-Za-z]{4,}", sample) and "{" in sample


# ---- length distributions ---------------------------------------------------------------------------------


def test_fixed_and_uniform() -> None:
    rng = random.Random(0)
    assert {length_dist("512")(rng) for _ in range(50)} == {512}
    assert {length_dist(" 7 ")(rng) for _ in range(5)} == {7}
    draws = [length_dist("uniform:3:8")(rng) for _ in range(2000)]
    assert set(draws) == set(range(3, 9))


def test_normal_mean_and_lognormal_median() -> None:
    rng = random.Random(0)
    normal = length_dist("normal:150:50")
    draws = [normal(rng) for _ in range(20_000)]
    assert abs(statistics.fmean(draws) - 150) < 2
    assert min(draws) >= 1
    lognormal = length_dist("lognormal:300:0.8:2000")
    draws = [lognormal(rng) for _ in range(20_000)]
    assert abs(statistics.median(draws) - 300) < 15
    assert max(draws) == 2000 and min(draws) >= 1


def test_zipf_favours_small_values() -> None:
    rng = random.Random(0)
    draws = Counter(length_dist("zipf:1.2:100")(rng) for _ in range(10_000))
    assert min(draws) >= 1 and max(draws) <= 100
    assert draws[1] > draws[2] > draws[10]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "empty"),
        ("0", "between 1"),
        ("-3", "between 1"),
        ("12.5", "unknown kind"),
        ("uniform:8:3", "above HI"),
        ("uniform:3", "LO:HI"),
        ("uniform:a:3", "integer"),
        ("normal:150", "MEAN:SD"),
        ("normal:150:-1", ">= 0"),
        ("normal:nan:1", "number"),
        ("lognormal:0:1", "> 0"),
        ("lognormal:100:1:0", "MAX"),
        ("zipf:1.1", "S:MAX"),
        ("gamma:2:3", "unknown kind 'gamma'"),
        (str(MAX_LENGTH + 1), "between 1"),
    ],
)
def test_bad_length_specs_say_why(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="bad length spec") as info:
        length_dist(spec)
    assert fragment in str(info.value)
    assert repr(spec) in str(info.value)


@given(st.text(max_size=30))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        draw = length_dist(text)
    except ValueError as exc:
        assert "bad length spec" in str(exc)
    else:
        assert 1 <= draw(random.Random(0)) <= MAX_LENGTH


@given(
    st.one_of(
        st.integers(1, MAX_LENGTH).map(lambda n: (str(n), n, n)),
        st.tuples(st.integers(1, 10_000), st.integers(0, 10_000)).map(
            lambda t: (f"uniform:{t[0]}:{t[0] + t[1]}", t[0], t[0] + t[1])
        ),
        st.tuples(st.floats(0.5, 1e5), st.floats(0, 1e4), st.integers(1, 50_000)).map(
            lambda t: (f"normal:{t[0]}:{t[1]}:{t[2]}", 1, t[2])
        ),
        st.tuples(st.floats(0.5, 1e5), st.floats(0, 5), st.integers(1, 50_000)).map(
            lambda t: (f"lognormal:{t[0]}:{t[1]}:{t[2]}", 1, t[2])
        ),
        st.tuples(st.floats(0.1, 4), st.integers(1, 1000)).map(lambda t: (f"zipf:{t[0]}:{t[1]}", 1, t[1])),
    ),
    st.integers(0, 2**32),
)
@settings(max_examples=200)
def test_valid_specs_draw_within_their_bounds(case: tuple[str, int, int], seed: int) -> None:
    spec, lo, hi = case
    draw = length_dist(spec)
    rng = random.Random(seed)
    for _ in range(20):
        value = draw(rng)
        assert isinstance(value, int)
        assert lo <= value <= hi


# ---- settings ---------------------------------------------------------------------------------------------


def test_settings_defaults_and_consistency() -> None:
    s = WorkloadSettings()
    assert s.kind == "random" and s.api == "chat" and s.ignore_eos
    with pytest.raises(ValueError, match="api: chat"):
        WorkloadSettings(kind="tools", api="completions")
    with pytest.raises(ValueError, match="token_ids"):
        WorkloadSettings(token_ids=True)
    with pytest.raises(ValueError, match="trace_file"):
        WorkloadSettings(kind="trace")
    with pytest.raises(ValueError, match="unique"):
        WorkloadSettings(tenants=[Tenant(name="a"), Tenant(name="a")])


def test_from_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("kind: random\ninput_len: uniform:9:3\n")
    with pytest.raises(WorkloadConfigError) as info:
        WorkloadSettings.from_file(path)
    assert f"{path}: input_len: bad length spec" in str(info.value)

    path.write_text("kind: random\ntenants:\n  - {name: a}\n  - {name: b, weight: -1}\n")
    with pytest.raises(WorkloadConfigError, match=r"tenants\[1\]\.weight"):
        WorkloadSettings.from_file(path)

    path.write_text("kind: random\ngruops: 3\n")
    with pytest.raises(WorkloadConfigError, match=r"w\.yaml: gruops: Extra inputs"):
        WorkloadSettings.from_file(path)

    path.write_text("kind: [unclosed\n")
    with pytest.raises(WorkloadConfigError, match=r"w\.yaml: not valid YAML"):
        WorkloadSettings.from_file(path)

    path.write_text("- 1\n")
    with pytest.raises(WorkloadConfigError, match="expected a mapping"):
        WorkloadSettings.from_file(path)

    with pytest.raises(WorkloadConfigError, match="cannot read"):
        WorkloadSettings.from_file(tmp_path / "missing.yaml")


def test_from_file_reads_settings_and_resolves_the_trace(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"timestamp": 0, "input_tokens": 5, "output_tokens": 5}\n')
    path = tmp_path / "w.yaml"
    path.write_text(
        "kind: trace\ntrace_file: t.jsonl\napi: completions\noutput_len: normal:100:10\n"
        "tenants:\n  - {name: web, api_key: k1, priority: 10, weight: 3}\n"
    )
    s = WorkloadSettings.from_file(path)
    assert s.trace_file == str(tmp_path / "t.jsonl")
    assert s.tenants[0].api_key == "k1"
    assert s.output_len == "normal:100:10"


# ---- random, completions, responses -----------------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "completions", "responses"])
@pytest.mark.parametrize("language", ["en", "zh", "mixed"])
def test_random_sizes_and_bodies(sizer: Sizer, api: str, language: str) -> None:
    s = WorkloadSettings(kind="random", api=api, language=language, input_len="uniform:1:3000")
    w = make_workload(s, sizer, seed=1)
    assert not w.needs_text
    langs = set()
    for spec in take(w, 60):
        check_wire(spec)
        assert spec.api == api and spec.max_tokens == 128
        text = user_text(spec)
        langs.add("zh" if CJK.search(text) else "en")
        content = spec.input_tokens if api == "completions" else spec.input_tokens - chat_tokens(0, 1)
        assert within(sizer.count(text), content)
        if api in ("chat", "completions"):
            assert spec.body["max_tokens"] == 128 and spec.body["ignore_eos"] is True
        else:
            assert spec.body["max_output_tokens"] == 128 and "ignore_eos" not in spec.body
    assert langs == ({"en", "zh"} if language == "mixed" else {language})


def test_chat_plan_matches_the_rendered_prompt(sizer: Sizer) -> None:
    w = make_workload(WorkloadSettings(kind="random", input_len="uniform:50:2000"), sizer, seed=2)
    for spec in take(w, 50):
        rendered = len(render_chat(sizer.tokenizer, spec.body["messages"]))
        assert within(rendered, spec.input_tokens)


def test_ignore_eos_can_be_off(sizer: Sizer) -> None:
    w = make_workload(WorkloadSettings(kind="random", ignore_eos=False), sizer, seed=1)
    assert "ignore_eos" not in w.next_request().body


def test_token_id_prompts_are_exact(sizer: Sizer) -> None:
    s = WorkloadSettings(kind="random", api="completions", token_ids=True, input_len="uniform:1:5000")
    sizes = []
    for spec in take(make_workload(s, sizer, seed=3), 100):
        check_wire(spec)
        assert isinstance(spec.body["prompt"], list)
        assert len(spec.body["prompt"]) == spec.input_tokens
        sizes.append(spec.input_tokens)
    assert len(set(sizes)) > 50


# ---- shared-prefix ----------------------------------------------------------------------------------------


def system_and_question(spec: RequestSpec) -> tuple[Any, Any]:
    if spec.api == "completions":
        prompt = spec.body["prompt"]
        if isinstance(prompt, list):
            return tuple(prompt[:100]), tuple(prompt[100:])
        system, _, question = prompt.partition("\n\n")
        return system, question
    messages = spec.body["messages"] if spec.api == "chat" else spec.body["input"]
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[0]["content"], messages[1]["content"]


@pytest.mark.parametrize("api", ["chat", "completions", "responses"])
def test_shared_prefix_groups(sizer: Sizer, api: str) -> None:
    s = WorkloadSettings(
        kind="shared-prefix",
        api=api,
        groups=4,
        prompts_per_group=5,
        system_len=300,
        question_len=40,
    )
    w = make_workload(s, sizer, seed=5)
    specs = take(w, 3 * 20)
    prompts_by_system: dict[Any, set[Any]] = {}
    for spec in specs:
        check_wire(spec)
        system, question = system_and_question(spec)
        prompts_by_system.setdefault(system, set()).add(question)
        if api != "completions":
            assert within(sizer.count(system), 300) and within(sizer.count(question), 40)
            assert spec.input_tokens == chat_tokens(340, 2)
        else:
            assert spec.body["prompt"].startswith(system + "\n\n")
            assert within(sizer.count(spec.body["prompt"]), spec.input_tokens)
    assert len(prompts_by_system) == 4
    assert all(len(questions) == 5 for questions in prompts_by_system.values())
    # Every pass of groups x prompts sends each prompt once, so groups stay balanced.
    for start in range(0, 60, 20):
        seen = Counter(system_and_question(spec) for spec in specs[start : start + 20])
        assert len(seen) == 20 and set(seen.values()) == {1}


def test_shared_prefix_token_ids_share_an_exact_prefix(sizer: Sizer) -> None:
    s = WorkloadSettings(
        kind="shared-prefix",
        api="completions",
        token_ids=True,
        groups=3,
        prompts_per_group=4,
        system_len=100,
        question_len=30,
    )
    specs = take(make_workload(s, sizer, seed=6), 12)
    for spec in specs:
        assert len(spec.body["prompt"]) == 130 == spec.input_tokens
    groups = Counter(tuple(spec.body["prompt"][:100]) for spec in specs)
    assert sorted(groups.values()) == [4, 4, 4]
    assert len({tuple(spec.body["prompt"]) for spec in specs}) == 12


def test_shared_prefix_contents_are_the_runs_and_order_the_workers(sizer: Sizer) -> None:
    s = WorkloadSettings(kind="shared-prefix", groups=3, prompts_per_group=3, system_len=50, question_len=10)
    a = take(make_workload(s, sizer, seed=7, worker=0), 9)
    b = take(make_workload(s, sizer, seed=7, worker=1), 9)
    c = take(make_workload(s, sizer, seed=8, worker=0), 9)
    prompts = [{orjson.dumps(x.body["messages"]) for x in specs} for specs in (a, b, c)]
    assert prompts[0] == prompts[1]
    assert prompts[0].isdisjoint(prompts[2])
    assert [x.body for x in a] != [x.body for x in b]


# ---- multi-turn -------------------------------------------------------------------------------------------


def test_multi_turn_histories_grow_in_order(sizer: Sizer) -> None:
    s = WorkloadSettings(kind="multi-turn", sessions=3, turns="uniform:2:4", input_len="200")
    w = make_workload(s, sizer, seed=1)
    assert isinstance(w, MultiTurnWorkload) and w.needs_text
    rng = random.Random(0)
    history: dict[str, list[RequestSpec]] = {}
    planned_turns: dict[str, int] = {}
    extras = 0
    pending: list[RequestSpec] = []
    for _ in range(300):
        if pending and rng.random() < 0.6:
            spec = pending.pop(rng.randrange(len(pending)))
            w.on_response(spec, f"Answer {spec.session} {spec.turn}.")
            continue
        open_before = len(w.active)
        idle_before = any(not x.busy for x in w.active.values())
        spec = w.next_request()
        check_wire(spec)
        assert spec.session is not None
        if spec.turn > 0:
            assert open_before >= 3  # turns continue only once the pool is full
        elif open_before >= 3:
            assert not idle_before  # an extra session only when every open one is busy
            extras += 1
        if spec.session not in history:
            planned_turns[spec.session] = w.active[spec.session].turns
        turns = history.setdefault(spec.session, [])
        assert all(p not in pending for p in turns), "a turn went out before the last one was answered"
        assert spec.turn == len(turns)
        messages = spec.body["messages"]
        assert len(messages) == 2 * spec.turn + 1
        assert [m["role"] for m in messages] == ["user", "assistant"] * spec.turn + ["user"]
        if turns:
            assert messages[:-2] == turns[-1].body["messages"]
            assert messages[-2]["content"] == f"Answer {spec.session} {spec.turn - 1}."
            assert spec.input_tokens > turns[-1].input_tokens
        else:
            assert within(sizer.count(messages[0]["content"]), 200)
        turns.append(spec)
        pending.append(spec)
    assert w.finished > 5 and w.failed == 0 and w.extra_sessions == extras
    assert set(planned_turns.values()) == {2, 3, 4}
    for session, turns in history.items():
        if session in w.active:
            assert len(turns) <= planned_turns[session]
        else:  # ended: after exactly its number of turns
            assert len(turns) == planned_turns[session]


def test_multi_turn_pool_fills_then_overflows_without_blocking(sizer: Sizer) -> None:
    s = WorkloadSettings(kind="multi-turn", sessions=4, turns="5", input_len="20", turn_input_len="10")
    w = make_workload(s, sizer, seed=2)
    assert isinstance(w, MultiTurnWorkload)
    first = take(w, 4)
    assert len({x.session for x in first}) == 4 and w.extra_sessions == 0
    extra = w.next_request()  # everyone busy, pool full: an extra session rather than blocking
    assert extra.session not in {x.session for x in first} and extra.turn == 0
    assert w.extra_sessions == 1
    w.on_response(first[2], "Fine.")
    follow = w.next_request()
    assert follow.session == first[2].session and follow.turn == 1
    # A failed turn ends its session; a stale or foreign answer is ignored.
    w.on_response(first[0], None)
    assert first[0].session not in w.active and w.failed == 1
    w.on_response(first[2], "again")  # stale: turn 0 was answered already
    assert w.active[str(follow.session)].messages[-1]["role"] == "user"


def test_multi_turn_sessions_end_after_their_turns(sizer: Sizer) -> None:
    s = WorkloadSettings(kind="multi-turn", sessions=2, turns="3", input_len="20", turn_input_len="10")
    w = make_workload(s, sizer, seed=3)
    assert isinstance(w, MultiTurnWorkload)
    seen: Counter[str] = Counter()
    for _ in range(30):
        spec = w.next_request()
        seen[str(spec.session)] += 1
        w.on_response(spec, "ok")
    assert w.extra_sessions == 0 and len(w.active) <= 2
    ended = [n for session, n in seen.items() if session not in w.active]
    assert set(ended) == {3} and w.finished == len(ended) >= 9
    assert all(seen[session] < 3 for session in w.active)


def test_multi_turn_over_completions_and_responses(sizer: Sizer) -> None:
    for api in ("completions", "responses"):
        s = WorkloadSettings(kind="multi-turn", api=api, sessions=1, turns="2", input_len="30")
        w = make_workload(s, sizer, seed=4)
        spec = w.next_request()
        w.on_response(spec, "First answer.")
        spec = w.next_request()
        check_wire(spec)
        if api == "completions":
            prompt = spec.body["prompt"]
            assert "Assistant: First answer." in prompt and prompt.endswith("Assistant:")
            assert within(sizer.count(prompt), spec.input_tokens)
        else:
            assert [m["role"] for m in spec.body["input"]] == ["user", "assistant", "user"]


# ---- sharegpt-like ----------------------------------------------------------------------------------------


def test_sharegpt_like_length_mix(sizer: Sizer) -> None:
    # Settings that went through a dump and back (as the command line merges them) keep the mix.
    s = WorkloadSettings.model_validate(
        WorkloadSettings(kind="sharegpt-like", api="completions").model_dump()
    )
    specs = take(make_workload(s, sizer, seed=1), 2000)
    inputs = [x.input_tokens for x in specs]
    outputs = [x.max_tokens for x in specs]
    assert 190 <= statistics.median(inputs) <= 250
    assert 175 <= statistics.median(outputs) <= 225
    assert max(inputs) <= 4096 and max(outputs) <= 2048 and min(inputs) >= 1
    assert statistics.quantiles(inputs, n=10)[-1] > 3 * statistics.median(inputs)  # heavy tail
    for spec in specs[:50]:
        assert within(sizer.count(spec.body["prompt"]), spec.input_tokens)


def test_sharegpt_like_explicit_lengths_win(sizer: Sizer) -> None:
    s = WorkloadSettings(kind="sharegpt-like", api="completions", output_len="64")
    specs = take(make_workload(s, sizer, seed=1), 50)
    assert {x.max_tokens for x in specs} == {64}
    assert len({x.input_tokens for x in specs}) > 20


# ---- tools ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "zh"])
def test_tools_requests(sizer: Sizer, language: str) -> None:
    s = WorkloadSettings(kind="tools", language=language)
    specs = take(make_workload(s, sizer, seed=1), 90)
    json_requests = follow_ups = 0
    for i, spec in enumerate(specs):
        check_wire(spec)
        body = spec.body
        messages = body["messages"]
        assert messages[0]["role"] == "system" and messages[1]["role"] == "user"
        assert bool(CJK.search(messages[1]["content"])) == (language == "zh")
        rendered = len(render_chat(sizer.tokenizer, messages, body.get("tools")))
        assert abs(rendered - spec.input_tokens) <= max(3, 0.03 * rendered)
        if i % 3 == 2:
            json_requests += 1
            fmt = body["response_format"]
            assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "trip"
            Draft202012Validator.check_schema(fmt["json_schema"]["schema"])
            assert "tools" not in body and "ignore_eos" not in body
            continue
        assert body["tool_choice"] == "auto" and body["ignore_eos"] is True
        tools = body["tools"]
        names = [t["function"]["name"] for t in tools]
        assert names[:2] == ["search_segments", "plan_itinerary"] and len(tools) in (2, 3)
        for tool in tools:
            params = tool["function"]["parameters"]
            Draft202012Validator.check_schema(params)
            assert set(params["required"]) <= set(params["properties"])
        plan = tools[1]["function"]["parameters"]["properties"]
        assert plan["segments"] == {
            "type": "array",
            "items": {"type": "integer"},
            "description": "Segment ids.",
        }
        if len(messages) == 4:
            follow_ups += 1
            call, result = messages[2], messages[3]
            assert call["role"] == "assistant" and result["role"] == "tool"
            tool_call = call["tool_calls"][0]
            assert result["tool_call_id"] == tool_call["id"]
            arguments = orjson.loads(tool_call["function"]["arguments"])
            Draft202012Validator(tools[0]["function"]["parameters"]).validate(arguments)
            assert orjson.loads(result["content"])["segments"]
        else:
            assert len(messages) == 2
    assert json_requests == 30
    assert 10 <= follow_ups <= 40


def test_tools_is_chat_only(sizer: Sizer) -> None:
    bad = WorkloadSettings.model_construct(
        **{**WorkloadSettings().model_dump(), "kind": "tools", "api": "responses"}
    )
    with pytest.raises(ValueError, match="chat"):
        make_workload(bad, sizer, seed=1)


# ---- trace ------------------------------------------------------------------------------------------------


def write_trace(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")


def test_trace_replays_in_order_then_stops(sizer: Sizer, tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [
        {"timestamp": 0.0, "input_tokens": 100, "output_tokens": 20},
        {"timestamp": 0.5, "input_tokens": 7, "output_tokens": 3, "prompt": "Hello there.", "tenant": "web"},
        {"timestamp": 0.25, "input_tokens": 900, "output_tokens": 50, "tenant": "unknown"},
        {"timestamp": 2, "input_tokens": 1, "output_tokens": 1},
    ]
    path = tmp_path / "t.jsonl"
    write_trace(path, lines)
    s = WorkloadSettings(
        kind="trace", trace_file=str(path), api="completions", tenants=[Tenant(name="web", priority=5)]
    )
    w = make_workload(s, sizer, seed=1)
    assert isinstance(w, TraceWorkload) and len(w) == 4
    specs = take(w, 4)
    assert [x.at for x in specs] == [0.0, 0.5, 0.25, 2.0]
    assert [x.max_tokens for x in specs] == [20, 3, 50, 1]
    assert [x.input_tokens for x in specs] == [100, 7, 900, 1]
    assert specs[1].body["prompt"] == "Hello there."
    assert (specs[1].tenant, specs[1].priority) == ("web", 5)
    assert (specs[2].tenant, specs[2].priority) == ("unknown", None)
    assert within(sizer.count(specs[2].body["prompt"]), 900)
    with pytest.raises(IndexError):
        w.next_request()
    halves = [make_workload(s, sizer, seed=1, worker=k, workers=2) for k in range(2)]
    assert [len(h) for h in halves if isinstance(h, TraceWorkload)] == [2, 2]
    assert [x.at for x in take(halves[1], 2)] == [0.5, 2.0]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"timestamp": -1, "input_tokens": 1, "output_tokens": 1}', "timestamp"),
        (b'{"timestamp": 1, "input_tokens": 0, "output_tokens": 1}', "input_tokens"),
        (b'{"timestamp": 1, "input_tokens": 3, "output_tokens": 1.5}', "output_tokens"),
        (b'{"timestamp": 1, "input_tokens": 3, "output_tokens": 1, "promt": "x"}', "unknown keys"),
    ],
)
def test_trace_errors_name_the_line(sizer: Sizer, tmp_path: Path, line: bytes, fragment: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"timestamp": 0, "input_tokens": 1, "output_tokens": 1}\n\n' + line + b"\n")
    s = WorkloadSettings(kind="trace", trace_file=str(path))
    with pytest.raises(ValueError, match=f"t.jsonl:3: .*{fragment}"):
        make_workload(s, sizer, seed=1)


# ---- tenants and determinism ------------------------------------------------------------------------------


def test_tenants_by_weight(sizer: Sizer) -> None:
    tenants = [
        Tenant(name="web", priority=10, weight=1),
        Tenant(name="batch", priority=-1, weight=3),
        Tenant(name="off", weight=0),
    ]
    s = WorkloadSettings(kind="random", input_len="10", output_len="1", tenants=tenants)
    specs = take(make_workload(s, sizer, seed=1), 8000)
    counts = Counter(x.tenant for x in specs)
    assert counts["off"] == 0
    assert abs(counts["web"] / 8000 - 0.25) < 0.02
    assert {(x.tenant, x.priority) for x in specs} == {("web", 10), ("batch", -1)}
    again = take(make_workload(s, sizer, seed=1), 100)
    assert [x.tenant for x in again] == [x.tenant for x in specs[:100]]
    assert all(
        x.tenant is None and x.priority is None for x in take(make_workload(WorkloadSettings(), sizer, 1), 5)
    )


@pytest.mark.parametrize("kind", ["random", "shared-prefix", "multi-turn", "sharegpt-like", "tools"])
def test_deterministic_per_seed_and_worker(sizer: Sizer, kind: str) -> None:
    s = WorkloadSettings(kind=kind, language="mixed", system_len=100)

    def run(seed: int, worker: int) -> list[bytes]:
        w = make_workload(s, Sizer(), seed, worker)
        out = []
        for _ in range(40):
            spec = w.next_request()
            out.append(orjson.dumps(spec.body) + orjson.dumps([spec.input_tokens, spec.session, spec.turn]))
            if w.needs_text:
                w.on_response(spec, "Reply.")
        return out

    assert run(11, 0) == run(11, 0)
    assert run(11, 0) != run(11, 1)
    assert run(11, 0) != run(12, 0)
