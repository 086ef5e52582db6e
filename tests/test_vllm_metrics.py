"""`parse_vllm_metrics` against vLLM 0.26's recorded `/metrics` pages and against prometheus_client's parser.

The expected values are never typed in by hand from the parser's point of view: `reference_load` reads the
same text with prometheus_client's full parser and applies the documented reductions (sum, max, newest LoRA
label set, ...), so the fast scanner is checked against an independent reading of the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.fleet.vllm_metrics import MetricsParseError, VLLMLoad, parse_vllm_metrics

DATA = Path(__file__).parent / "data"
RECORDED = ("metrics_after_load.txt", "metrics_idle.txt", "metrics_kv_pressure.txt")
LORA_SLEEP: dict[str, Any] = json.loads((DATA / "lora_sleep.json").read_text())
EXCERPTS = sorted(k for k, v in LORA_SLEEP.items() if k.startswith("metrics") and isinstance(v, list))


# ---- the reference: prometheus_client's parser + the documented reductions -----------------------------
def _adapters(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _nan_max(values: Sequence[float]) -> float | None:
    if not values:
        return None
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values)


def _total(values: Sequence[float]) -> float:
    out = 0.0
    for v in values:  # page order, as the scanner adds them
        out += v
    return out


def reference_load(text: str) -> VLLMLoad | None:
    """What the page says, read with prometheus_client; None where the parser must raise."""
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            by_name.setdefault(s.name, []).append((dict(s.labels), float(s.value)))

    def values(name: str) -> list[float]:
        return [v for _, v in by_name.get(name, [])]

    def samples(name: str) -> list[tuple[dict[str, str], float]]:
        return by_name.get(name, [])

    kv = _nan_max(values("vllm:kv_cache_usage_perc"))
    if kv is None:
        kv = _nan_max(values("vllm:gpu_cache_usage_perc"))
    if kv is None and not samples("vllm:num_requests_running") and not samples("vllm:num_requests_waiting"):
        return None

    awake_values = [v for lb, v in samples("vllm:engine_sleep_state") if lb.get("sleep_state") == "awake"]
    level = 0
    for lb, v in samples("vllm:engine_sleep_state"):
        if v == 1.0 and lb.get("sleep_state") == "discard_all":
            level = 2
        elif v == 1.0 and lb.get("sleep_state") == "weights_offloaded":
            level = max(level, 1)

    block_sizes = [_int_or_none(lb.get("block_size")) for lb, _ in samples("vllm:cache_config_info")]
    gpu_blocks = [_int_or_none(lb.get("num_gpu_blocks")) for lb, _ in samples("vllm:cache_config_info")]
    known_sizes = [b for b in block_sizes if b is not None]
    known_blocks = [b for b in gpu_blocks if b is not None]

    newest: dict[str, str] | None = None
    newest_stamp = -math.inf
    for lb, v in samples("vllm:lora_requests_info"):
        if v > newest_stamp:
            newest, newest_stamp = lb, v

    return VLLMLoad(
        running=_total(values("vllm:num_requests_running")),
        waiting=_total(values("vllm:num_requests_waiting")),
        waiting_deferred=_total(
            [v for lb, v in samples("vllm:num_requests_waiting_by_reason") if lb.get("reason") == "deferred"]
        ),
        kv_usage=0.0 if kv is None else kv,
        prefix_queries=_total(values("vllm:prefix_cache_queries_total")),
        prefix_hits=_total(values("vllm:prefix_cache_hits_total")),
        awake=all(v == 1.0 for v in awake_values) and level == 0,
        sleep_level=level,
        block_size=min(known_sizes) if known_sizes else None,
        num_gpu_blocks=min(known_blocks) if known_blocks else None,
        lora_running=_adapters(newest.get("running_lora_adapters")) if newest is not None else (),
        lora_waiting=_adapters(newest.get("waiting_lora_adapters")) if newest is not None else (),
        max_lora=_int_or_none(newest.get("max_lora")) if newest is not None else None,
    )


def same(a: VLLMLoad, b: VLLMLoad) -> bool:
    """Field-wise equality in which NaN equals NaN."""
    for f in dataclasses.fields(VLLMLoad):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True


def check_against_reference(text: str) -> VLLMLoad | None:
    expected = reference_load(text)
    if expected is None:
        with pytest.raises(MetricsParseError):
            parse_vllm_metrics(text.encode())
        return None
    got = parse_vllm_metrics(text.encode())
    assert same(got, expected), f"\n got      {got}\n expected {expected}"
    assert same(parse_vllm_metrics(text), got)  # str and bytes in, same answer
    return got


# ---- recorded pages (vLLM 0.26 on an H200) -------------------------------------------------------------
@pytest.mark.parametrize("name", RECORDED)
def test_recorded_page_matches_prometheus_client(name: str) -> None:
    text = (DATA / name).read_text()
    got = check_against_reference(text)
    assert got is not None
    assert got.awake and got.sleep_level == 0
    assert got.block_size == 16 and got.num_gpu_blocks is not None and got.num_gpu_blocks > 0


def test_recorded_values_read_straight_from_the_file() -> None:
    # Spot values taken from the sample lines themselves, independently of any parser.
    text = (DATA / "metrics_after_load.txt").read_text()

    def value_of(prefix: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        assert len(lines) == 1
        return float(lines[0].rsplit(" ", 1)[1])

    got = parse_vllm_metrics((DATA / "metrics_after_load.txt").read_bytes())
    assert got.prefix_queries == value_of("vllm:prefix_cache_queries_total{")
    assert got.prefix_hits == value_of("vllm:prefix_cache_hits_total{")
    assert got.kv_usage == value_of("vllm:kv_cache_usage_perc{")
    assert got.running == value_of("vllm:num_requests_running{")
    pressure = parse_vllm_metrics((DATA / "metrics_kv_pressure.txt").read_bytes())
    assert pressure.num_gpu_blocks == 512  # the server ran with --num-gpu-blocks-override 512


@pytest.mark.parametrize("name", RECORDED)
def test_crlf_line_endings(name: str) -> None:
    raw = (DATA / name).read_bytes()
    assert parse_vllm_metrics(raw.replace(b"\n", b"\r\n")) == parse_vllm_metrics(raw)


@pytest.mark.parametrize("key", EXCERPTS)
def test_lora_sleep_excerpts_match_prometheus_client(key: str) -> None:
    lines: list[str] = LORA_SLEEP[key]
    got = check_against_reference("\n".join(lines) + "\n")
    assert got is not None
    if any(ln.startswith("vllm:engine_sleep_state") for ln in lines):
        asleep = [ln for ln in lines if 'sleep_state="awake"' in ln and not ln.endswith(" 1.0")]
        assert got.awake == (not asleep)
    else:
        assert got.awake and got.sleep_level == 0  # family absent: treated as awake (older vLLM)


def test_lora_current_label_set_is_the_newest_timestamp_not_the_last_line() -> None:
    lines: list[str] = LORA_SLEEP["metrics_after_lora"]
    lora = [ln for ln in lines if ln.startswith("vllm:lora_requests_info{")]
    # the recorded page lists the travel-zh set last, but its timestamp is older than the empty set's
    assert 'running_lora_adapters="travel-zh"' in lora[-1]
    got = parse_vllm_metrics("\n".join(lines))
    assert got.lora_running == () and got.lora_waiting == ()
    assert got.max_lora == 2
    # drop the newest set and the two-adapter set is no longer newest either: travel-zh is
    newest = max(lora, key=lambda ln: float(ln.rsplit(" ", 1)[1]))
    rest = [ln for ln in lines if ln != newest]
    assert parse_vllm_metrics("\n".join(rest)).lora_running == ("travel-zh",)


# ---- synthetic pages ----------------------------------------------------------------------------------
def page(*lines: str) -> str:
    return "\n".join(lines) + "\n"


BASE = (
    "# HELP vllm:num_requests_running Number of requests in model execution batches.",
    "# TYPE vllm:num_requests_running gauge",
    'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
    "# TYPE vllm:num_requests_waiting gauge",
    'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0',
    "# TYPE vllm:kv_cache_usage_perc gauge",
    'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
)


def test_two_engines_sum_counts_and_take_the_fullest_cache() -> None:
    text = page(
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
        'vllm:num_requests_running{engine="1",model_name="m"} 4.0',
        "# TYPE vllm:num_requests_waiting gauge",
        'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0',
        'vllm:num_requests_waiting{engine="1",model_name="m"} 5.0',
        "# TYPE vllm:num_requests_waiting_by_reason gauge",
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 1.0',
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="deferred"} 0.0',
        'vllm:num_requests_waiting_by_reason{engine="1",model_name="m",reason="capacity"} 2.0',
        'vllm:num_requests_waiting_by_reason{engine="1",model_name="m",reason="deferred"} 3.0',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5',
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75',
        "# TYPE vllm:prefix_cache_queries_total counter",
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0',
        'vllm:prefix_cache_queries_total{engine="1",model_name="m"} 1.5e+03',
        "# TYPE vllm:prefix_cache_hits_total counter",
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 10.0',
        'vllm:prefix_cache_hits_total{engine="1",model_name="m"} 20.0',
        'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1000"} 1.0',
        'vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="900"} 1.0',
    )
    got = parse_vllm_metrics(text)
    assert (got.running, got.waiting, got.waiting_deferred) == (7.0, 6.0, 3.0)
    assert got.kv_usage == 0.75
    assert (got.prefix_queries, got.prefix_hits) == (1600.0, 30.0)
    assert (got.block_size, got.num_gpu_blocks) == (16, 900)
    assert got.awake and got.sleep_level == 0
    check_against_reference(text)


def sleep_lines(engine: str, awake: float, offloaded: float, discarded: float) -> tuple[str, ...]:
    head = f'vllm:engine_sleep_state{{engine="{engine}",model_name="m",sleep_state='
    return (
        f'{head}"awake"}} {awake}',
        f'{head}"weights_offloaded"}} {offloaded}',
        f'{head}"discard_all"}} {discarded}',
    )


@pytest.mark.parametrize(
    ("states", "awake", "level"),
    [
        ([(1.0, 0.0, 0.0)], True, 0),
        ([(0.0, 1.0, 0.0)], False, 1),
        ([(0.0, 0.0, 1.0)], False, 2),
        ([(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)], False, 1),  # one of two engines asleep: not routable
        ([(0.0, 1.0, 0.0), (0.0, 0.0, 1.0)], False, 2),
        ([(math.nan, 0.0, 0.0)], False, 0),  # garbage in the awake flag is not "awake"
        ([(0.5, 0.0, 0.0)], False, 0),
    ],
)
def test_sleep_state(states: list[tuple[float, float, float]], awake: bool, level: int) -> None:
    lines: list[str] = [*BASE, "# TYPE vllm:engine_sleep_state gauge"]
    for i, (a, o, d) in enumerate(states):
        lines += sleep_lines(str(i), a, o, d)
    got = parse_vllm_metrics(page(*lines))
    assert (got.awake, got.sleep_level) == (awake, level)
    check_against_reference(page(*lines))


def test_sleep_family_absent_means_awake() -> None:
    got = parse_vllm_metrics(page(*BASE))
    assert got.awake and got.sleep_level == 0


def test_old_kv_name_is_a_fallback() -> None:
    old = page(
        "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:gpu_cache_usage_perc gauge",
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.4',
    )
    assert parse_vllm_metrics(old).kv_usage == 0.4
    both = page(*BASE, 'vllm:gpu_cache_usage_perc{model_name="m"} 0.9')
    assert parse_vllm_metrics(both).kv_usage == 0.25  # the 0.26 name wins when both are there
    check_against_reference(old)
    check_against_reference(both)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "<html><body>502 Bad Gateway</body></html>",
        page(
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
        ),
        page(
            'vllm:prefix_cache_queries_total{engine="0"} 5.0',
            'vllm:cache_config_info{block_size="16"} 1.0',
            'vllm:num_requests_running_extra{engine="0"} 5.0',
            'python_gc_objects_collected_total{generation="0"} 1.0',
        ),
    ],
)
def test_missing_families_raise(text: str) -> None:
    with pytest.raises(MetricsParseError, match="vllm:num_requests_running"):
        parse_vllm_metrics(text)
    assert issubclass(MetricsParseError, ValueError)


def test_help_and_type_lines_are_not_samples() -> None:
    text = page(
        "# HELP vllm:num_requests_running 99",
        "# TYPE vllm:num_requests_running gauge",
        "# HELP vllm:num_requests_waiting vllm:num_requests_waiting 42",
        "# TYPE vllm:num_requests_waiting gauge",
        "# vllm:kv_cache_usage_perc 0.99",
        'vllm:num_requests_running{engine="0"} 1.0',
        'vllm:num_requests_waiting{engine="0"} 2.0',
        "#vllm:num_requests_running 50",
        'vllm:num_requests_running_total{engine="0"} 70.0',  # a longer name that starts with a wanted one
        'xvllm:num_requests_running{engine="0"} 80.0',
        'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 2.0',  # not added to waiting
    )
    got = parse_vllm_metrics(text)
    assert (got.running, got.waiting, got.kv_usage) == (1.0, 2.0, 0.0)
    check_against_reference(text)


def test_escaped_label_values() -> None:
    text = page(
        *BASE,
        r'vllm:num_requests_running{engine="1",model_name="a \"quoted\" } name, with \\ and \n"} 4.0',
        r'vllm:num_requests_waiting_by_reason{model_name="reason=\"deferred\"",reason="capacity"} 7.0',
        r'vllm:num_requests_waiting_by_reason{model_name="x}",reason="deferred"} 1.0',
        r'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a\"b,c\\d, e ,",'
        r'waiting_lora_adapters=""} 5',
        r'vllm:engine_sleep_state{model_name="sleep_state=\"awake\"",sleep_state="weights_offloaded"} 1',
    )
    got = parse_vllm_metrics(text)
    assert got.running == 7.0
    assert got.waiting_deferred == 1.0
    assert got.lora_running == ('a"b', "c\\d", "e")
    assert got.lora_waiting == ()
    assert got.max_lora == 4
    assert (got.awake, got.sleep_level) == (False, 1)
    check_against_reference(text)


def test_values_and_timestamps() -> None:
    text = page(
        "vllm:num_requests_running 2 1700000000000",  # no labels, integer value, timestamp
        'vllm:num_requests_waiting{engine="0"} 1.5e+01 1700000000000',
        'vllm:num_requests_waiting{engine="1"}\t4\t1700000000001',
        'vllm:kv_cache_usage_perc{engine="0"} 1e-2',
        'vllm:prefix_cache_queries_total{engine="0"} +Inf',
        'vllm:prefix_cache_hits_total{engine="0"} NaN',
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="x",waiting_lora_adapters=""} '
        "1.7952641966363819e+09 1700000000000",
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="y",waiting_lora_adapters="y"} '
        "1.7952641862249088e+09",
    )
    got = parse_vllm_metrics(text)
    assert (got.running, got.waiting, got.kv_usage) == (2.0, 19.0, 0.01)
    assert got.prefix_queries == math.inf and math.isnan(got.prefix_hits)
    assert got.lora_running == ("x",)
    check_against_reference(text)


def test_nan_usage_propagates_and_malformed_values_are_skipped() -> None:
    text = page(
        'vllm:num_requests_running{engine="0"} 1',
        'vllm:num_requests_running{engine="1"} banana',
        'vllm:kv_cache_usage_perc{engine="0"} 0.5',
        'vllm:kv_cache_usage_perc{engine="1"} NaN',
        'vllm:kv_cache_usage_perc{engine="2"} 0.7',
    )
    got = parse_vllm_metrics(text)
    assert got.running == 1.0
    assert math.isnan(got.kv_usage)


def test_first_line_is_a_sample_and_no_trailing_newline() -> None:
    got = parse_vllm_metrics('vllm:num_requests_running{engine="0"} 6\r\nvllm:num_requests_waiting 1')
    assert (got.running, got.waiting) == (6.0, 1.0)


# ---- property: random pages agree with prometheus_client ----------------------------------------------
_LABEL_TEXT = st.lists(
    st.sampled_from([*'ab_-.,:={} "\\\n/é', "vllm:num_requests_running 5", "\nvllm:kv_cache_usage_perc{} 1"]),
    max_size=8,
).map("".join)
_ADAPTER = st.text(alphabet=st.sampled_from(list('abz-_ "\\é{}')), min_size=0, max_size=6)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@st.composite
def _number(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["float", "int", "sci", "special"]))
    if kind == "int":
        return str(draw(st.integers(-(10**6), 10**12)))
    if kind == "sci":
        return f"{draw(st.floats(allow_nan=False, allow_infinity=False)):.16e}"
    if kind == "special":
        return draw(st.sampled_from(["+Inf", "-Inf", "NaN", "Inf"]))
    return repr(draw(st.floats(allow_nan=False, allow_infinity=False)))


@st.composite
def _sample_line(draw: st.DrawFn, name: str, labels: dict[str, str], value: str) -> str:
    items = list(labels.items())
    items = draw(st.permutations(items)) if items else items
    extra = draw(
        st.dictionaries(st.sampled_from(["zone", "a_b", "le", "engine_id"]), _LABEL_TEXT, max_size=2)
    )
    items += [(k, v) for k, v in extra.items() if k not in labels]
    sep = draw(st.sampled_from([" ", "\t"]))
    head = (
        name
        if not items and draw(st.booleans())
        else name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"
    )
    line = f"{head}{sep}{value}"
    if draw(st.booleans()):
        line += f"{sep}{draw(st.integers(0, 2 * 10**12))}"
    return line


def _meta(name: str, typ: str) -> list[str]:
    return [f"# HELP {name} Mentions {name} 5 and vllm:num_requests_running{{}} 9.", f"# TYPE {name} {typ}"]


@st.composite
def _family(
    draw: st.DrawFn, name: str, typ: str, per_engine: list[dict[str, str]], value: st.SearchStrategy[str]
) -> list[str]:
    lines = _meta(name, typ) if draw(st.booleans()) else []
    for labels in per_engine:
        lines.append(draw(_sample_line(name, labels, draw(value))))
    return lines


@st.composite
def vllm_pages(draw: st.DrawFn) -> str:
    engines = [{"engine": str(i), "model_name": draw(_LABEL_TEXT)} for i in range(draw(st.integers(1, 3)))]
    present = draw(st.sets(st.sampled_from(range(10))))
    blocks: list[list[str]] = []
    simple = [
        ("vllm:num_requests_running", "gauge"),
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"),
        ("vllm:gpu_cache_usage_perc", "gauge"),
        ("vllm:prefix_cache_queries_total", "counter"),
        ("vllm:prefix_cache_hits_total", "counter"),
    ]
    for i, (name, typ) in enumerate(simple):
        if i in present:
            blocks.append(draw(_family(name, typ, engines, _number())))
    if 6 in present:
        per = [{**e, "reason": r} for e in engines for r in ("capacity", "deferred")]
        blocks.append(draw(_family("vllm:num_requests_waiting_by_reason", "gauge", per, _number())))
    if 7 in present:
        states = ("awake", "weights_offloaded", "discard_all")
        per = [{**e, "sleep_state": s} for e in engines for s in states]
        flag = st.sampled_from(["0.0", "1.0", "1", "0", "NaN", "0.5", "1e0"])
        blocks.append(draw(_family("vllm:engine_sleep_state", "gauge", per, flag)))
    if 8 in present:
        size = st.sampled_from(["16", "32", "None", "x"])
        per = [
            {
                **e,
                "block_size": draw(size),
                "num_gpu_blocks": draw(st.one_of(st.integers(1, 10**6).map(str), st.just("None"))),
                "cache_dtype": "auto",
                "kv_cache_dtype_skip_layers": "[]",
            }
            for e in engines
        ]
        blocks.append(draw(_family("vllm:cache_config_info", "gauge", per, st.just("1.0"))))
    if 9 in present:
        lines = _meta("vllm:lora_requests_info", "gauge")
        for _ in range(draw(st.integers(1, 5))):
            labels = {
                "max_lora": draw(st.sampled_from(["1", "2", "8"])),
                "running_lora_adapters": ",".join(draw(st.lists(_ADAPTER, max_size=3))),
                "waiting_lora_adapters": ",".join(draw(st.lists(_ADAPTER, max_size=3))),
            }
            stamp = repr(draw(st.floats(1.7e9, 1.8e9)))
            lines.append(draw(_sample_line("vllm:lora_requests_info", labels, stamp)))
        blocks.append(lines)
    # unrelated families, some with names that start like the wanted ones
    for name in draw(
        st.lists(
            st.sampled_from(
                [
                    "vllm:num_requests_running_max",
                    "vllm:kv_cache_usage_perc_bucket",
                    "vllm:request_success_total",
                    "vllm:prefix_cache_queries_created",
                    "vllm:lora_requests_info2",
                    "process_cpu_seconds_total",
                    "http_requests_total",
                ]
            ),
            max_size=5,
        )
    ):
        blocks.append(draw(_family(name, "gauge", engines, _number())))
    if draw(st.booleans()):
        blocks.append(["# a comment: vllm:num_requests_waiting 77", ""])
    ordered = draw(st.permutations(blocks))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(line for block in ordered for line in block) + newline


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vllm_pages())
def test_random_pages_agree_with_prometheus_client(text: str) -> None:
    check_against_reference(text)
