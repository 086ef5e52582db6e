"""Load schedules, per-request metrics from hand-built streams, and aggregates."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetgate.bench.client import StreamState
from fleetgate.bench.load import Level, arrivals, parse_load, share
from fleetgate.bench.records import RequestRecord
from fleetgate.bench.stats import SLO, distribution, parse_seconds, quantile, summarize


def chat_chunk(content: str | None = None, role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, object] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    import orjson

    return orjson.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


USAGE = b'{"choices":[],"usage":{"prompt_tokens":32,"total_tokens":40,"completion_tokens":%d}}'


def test_ttft_waits_for_content_not_the_role_chunk_or_empty_chunks() -> None:
    s = StreamState("chat")
    s.feed(chat_chunk("", role=True), 0.010)
    s.feed(chat_chunk(""), 0.020)  # a token with no visible text
    s.feed(chat_chunk("Hello"), 0.030)
    s.feed(chat_chunk(" world"), 0.040)
    s.feed(chat_chunk("", finish="length"), 0.050)
    s.feed(USAGE % 4, 0.050)
    s.feed(b"[DONE]", 0.051)
    assert s.first_content == pytest.approx(0.030)
    assert s.done and s.error is None
    assert (s.prompt_tokens, s.completion_tokens) == (32, 4)
    assert s.itl() == pytest.approx([0.010, 0.010])


def test_chunks_carrying_several_tokens_spread_their_gap() -> None:
    s = StreamState("chat")
    s.feed(chat_chunk("", role=True), 0.0)
    s.feed(chat_chunk("a"), 0.10)
    s.feed(chat_chunk("bcd"), 0.16)  # 3 tokens arrived together
    s.feed(chat_chunk("efg"), 0.22)
    s.feed(USAGE % 7, 0.22)
    assert s.itl() == pytest.approx([0.02, 0.02])


def test_tool_call_and_reasoning_deltas_count_as_first_content() -> None:
    import orjson

    s = StreamState("chat")
    s.feed(chat_chunk("", role=True), 0.0)
    call = {
        "choices": [{"delta": {"content": None, "tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]
    }
    s.feed(orjson.dumps(call), 0.2)
    assert s.first_content == pytest.approx(0.2)
    r = StreamState("chat")
    r.feed(orjson.dumps({"choices": [{"delta": {"reasoning_content": "hmm"}}]}), 0.3)
    assert r.first_content == pytest.approx(0.3)


def test_completions_and_responses_streams() -> None:
    c = StreamState("completions", want_text=True)
    for t, text in ((0.1, ""), (0.2, " ok"), (0.3, " go")):
        c.feed(b'{"choices":[{"index":0,"text":"%s"}]}' % text.encode(), t)
    assert c.first_content == pytest.approx(0.2)
    assert "".join(c.text_parts or []) == " ok go"
    r = StreamState("responses")
    r.feed(b'{"type":"response.created","response":{}}', 0.01)
    r.feed(b'{"type":"response.output_text.delta","delta":"hi"}', 0.05)
    r.feed(b'{"type":"response.completed","response":{"usage":{"input_tokens":11,"output_tokens":5}}}', 0.09)
    assert r.first_content == pytest.approx(0.05) and r.done
    assert (r.prompt_tokens, r.completion_tokens) == (11, 5)


def test_error_event_mid_stream_is_recorded() -> None:
    s = StreamState("chat")
    s.feed(chat_chunk("x"), 0.1)
    s.feed(b'{"error":{"message":"upstream died","type":"InternalServerError","param":null,"code":500}}', 0.2)
    assert s.error == "InternalServerError" and s.error_message == "upstream died"
    bad = StreamState("chat")
    bad.feed(b"{not json", 0.1)
    assert bad.error == "bad_event"


def test_parse_load_forms_and_errors() -> None:
    assert parse_load("concurrency=8") == [Level("concurrency", 8)]
    assert parse_load("poisson=2.5") == [Level("poisson", 2.5)]
    assert [lv.label for lv in parse_load("sweep=rate:5,10,20")] == ["rate=5", "rate=10", "rate=20"]
    for bad in ("concurrency", "rate=x", "concurrency=1.5", "sweep=bogus:1", "burst=3", "rate=0"):
        with pytest.raises(ValueError):
            parse_load(bad)


def test_constant_rate_schedule() -> None:
    times = arrivals(Level("rate", 10), 0, duration=2.0, count=None)
    assert len(times) == 20
    assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(times))
    assert len(arrivals(Level("rate", 10), 0, duration=None, count=7)) == 7


def test_poisson_schedule_has_the_right_rate_and_is_seeded() -> None:
    times = arrivals(Level("poisson", 50), 1, duration=200.0, count=None)
    assert len(times) == pytest.approx(10_000, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.pstdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.1)  # exponential: sd = mean
    assert times == arrivals(Level("poisson", 50), 1, duration=200.0, count=None)


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_share_splits_exactly(total: int, parts: int) -> None:
    assert sum(share(total, parts, i) for i in range(parts)) == total


def test_quantiles_and_seconds() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert math.isnan(quantile([], 0.5))
    assert distribution([])["count"] == 0
    assert parse_seconds("250ms") == 0.25 and parse_seconds("2s") == 2 and parse_seconds("1.5") == 1.5
    assert parse_seconds("50us") == pytest.approx(5e-5)


def record(i: int, ttft: float, e2e: float, tokens: int, status: int = 200, **kw: object) -> RequestRecord:
    r = RequestRecord(index=i, api="chat", tenant=None, priority=None, scheduled=i * 0.1, sent=i * 0.1, **kw)  # type: ignore[arg-type]
    r.status, r.ttft, r.e2e, r.completion_tokens, r.prompt_tokens = status, ttft, e2e, tokens, 10
    if status != 200:
        r.error = "ServiceUnavailableError"
    return r


def test_summary_goodput_and_errors() -> None:
    recs = [record(i, 0.1 * (i + 1), 1.0, 11) for i in range(10)]
    recs.append(record(10, 0.0, 0.0, 0, status=503))
    slo = SLO.parse("ttft=500ms,attainment=0.9")
    s = summarize(recs, 10.0, slo)
    assert (s["requests"], s["ok"], s["errors"]) == (11, 10, 1)
    assert s["errors_by_status"] == {"503": 1}
    assert s["errors_by_type"] == {"ServiceUnavailableError": 1}
    assert s["output_tok_s"] == pytest.approx(11.0)
    assert s["goodput_rate"] == pytest.approx(0.5)  # 5 requests had TTFT <= 500 ms
    assert s["slo_attainment"] == pytest.approx(5 / 11)
    assert s["tpot"]["p50"] == pytest.approx(0.045)  # median of (1 s - TTFT) / 10 gaps


def test_excluded_records_stay_out_of_aggregates() -> None:
    recs = [record(i, 0.1, 1.0, 5) for i in range(4)]
    recs[0].excluded = True
    assert summarize(recs, 1.0, SLO())["requests"] == 3


def test_slo_parse_errors() -> None:
    with pytest.raises(ValueError, match="expected"):
        SLO.parse("latency=1s")
    with pytest.raises(ValueError, match="attainment"):
        SLO.parse("ttft=1s,attainment=2")
