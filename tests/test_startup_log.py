"""The simulator's startup log against vLLM 0.26.0 logs recorded on an H200 (tests/data)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetgate.sim.startup_log import RECORDED_ROUTES, StartupPlan, startup_lines

DATA = Path(__file__).parent / "data"

# vLLM's own lines. '.' also takes the '\r' that ends the recorded banner lines.
LINE_RE = re.compile(
    r"\((?P<proc>APIServer|EngineCore) pid=(?P<pid>\d+)\) (?P<level>INFO|WARNING) "
    r"(?P<stamp>\d\d-\d\d \d\d:\d\d:\d\d) \[(?P<tag>[\w.]+\.py:\d+)\] (?P<msg>.*)"
)
# uvicorn's lines, which vLLM passes through with only the process prefix.
UVICORN_RE = re.compile(
    r"\(APIServer pid=(?P<pid>\d+)\) INFO:     "
    r"(?P<msg>Started server process \[\d+\]|Waiting for application startup\."
    r"|Application startup complete\.)"
)

# The recorder cut every line at this many characters.
RECORDED_WIDTH = 400
# Environment noise in the recordings: the recording host's fd limit.
NOISE_TAGS = {"system_utils.py:299"}
# Lines whose numbers come from the simulator's own timing and memory model rather than from the
# plan, so they can only match the recording in form.
MODELLED_TAGS = {
    "parallel_state.py:1615",
    "backends.py:1094",
    "backends.py:1155",
    "backends.py:393",
    "decorators.py:708",
    "monitor.py:81",
    "gpu_worker.py:560",
    "gpu_worker.py:857",
    "kv_cache_utils.py:2115",
    "core.py:340",
    "core.py:347",
}
COMPILE_TAGS = {
    "backends.py:1094",
    "backends.py:1155",
    "backends.py:378",
    "backends.py:393",
    "decorators.py:708",
    "monitor.py:53",
    "monitor.py:81",
    "model_runner.py:747",
}
ROUTE_TAG = "launcher.py:46"
UVICORN = "uvicorn"
START = 1_763_728_261.0


class KVEventsConfig:
    """Stands in for vLLM's config object, which non-default args prints by repr."""

    def __repr__(self) -> str:
        return (
            "KVEventsConfig(enable_kv_cache_events=True, publisher='zmq', endpoint='tcp://*:5557', "
            "topic='kv')"
        )


def default_plan(**changes: object) -> StartupPlan:
    fields: dict[str, object] = {
        "version": "0.26.0",
        "model": "/tmp/model",
        "served_model_names": ["llama-8b"],
        "host": "127.0.0.1",
        "port": 8000,
        "architecture": "LlamaForCausalLM",
        "max_model_len": 131072,
        "max_num_batched_tokens": 8192,
        "kv_cache_tokens": 919824,
        "weights_gib": 15.0,
        "enforce_eager": False,
        "non_default_args": {
            "model_tag": "/tmp/model",
            "host": "127.0.0.1",
            "model": "/tmp/model",
            "served_model_name": ["llama-8b"],
            "load_format": "dummy",
        },
        "load_seconds": 1.57693,
        "compile_seconds": 17.81,
        "graph_seconds": 4.0,
        "other_seconds": 68.6,
        "routes": list(RECORDED_ROUTES),
    }
    fields.update(changes)
    return StartupPlan(**fields)  # type: ignore[arg-type]


def eager_plan(**changes: object) -> StartupPlan:
    fields: dict[str, object] = {
        "max_model_len": 8192,
        "kv_cache_tokens": 8192,
        "enforce_eager": True,
        "non_default_args": {
            "model_tag": "/tmp/model",
            "enable_auto_tool_choice": True,
            "tool_call_parser": "hermes",
            "host": "127.0.0.1",
            "model": "/tmp/model",
            "max_model_len": 8192,
            "enforce_eager": True,
            "served_model_name": ["llama-8b"],
            "load_format": "dummy",
            "num_gpu_blocks_override": 512,
            "kv_events_config": KVEventsConfig(),
        },
        "load_seconds": 1.37986,
        "compile_seconds": 0.0,
        "graph_seconds": 0.0,
        "other_seconds": 57.6,
    }
    fields.update(changes)
    return default_plan(**fields)


CASES = {
    "default": ("startup_log_default.txt", default_plan, 2465, 2584),
    "eager": ("startup_log_eager_tools.txt", eager_plan, 533, 736),
}


def read_recording(name: str) -> list[str]:
    # newline="" keeps the '\r' that vLLM's banner really prints.
    with open(DATA / name, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    assert lines[-1] == ""
    return [
        line
        for line in lines[:-1]
        # The c10d socket warning comes from torch's C++ side, without vLLM's prefix.
        if line.startswith("(") and not _has_tag(line, NOISE_TAGS)
    ]


def _has_tag(line: str, tags: set[str]) -> bool:
    m = LINE_RE.fullmatch(line)
    return m is not None and m["tag"] in tags


def kind(line: str) -> str:
    m = LINE_RE.fullmatch(line)
    if m is not None:
        return m["tag"]
    assert UVICORN_RE.fullmatch(line), line
    return UVICORN


def kinds(lines: list[str]) -> list[str]:
    """Tags in order, with a run of route lines counted once."""
    out: list[str] = []
    for line in lines:
        k = kind(line)
        if not (k == ROUTE_TAG and out and out[-1] == ROUTE_TAG):
            out.append(k)
    return out


class Clock:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return START


def generate(
    plan: StartupPlan, api_pid: int, engine_pid: int, now: Callable[[], float] | None = None
) -> list[tuple[float, str]]:
    return list(startup_lines(plan, api_pid, engine_pid, now or Clock()))


@pytest.mark.parametrize("case", CASES)
def test_recordings_fit_the_line_format(case: str) -> None:
    # Guards the regex: if it stopped describing the recording, the checks below would prove nothing.
    name, _, api_pid, engine_pid = CASES[case]
    for line in read_recording(name):
        m = LINE_RE.fullmatch(line)
        assert m is not None, line
        assert int(m["pid"]) == (api_pid if m["proc"] == "APIServer" else engine_pid)


@pytest.mark.parametrize("case", CASES)
def test_every_line_has_vllm_format(case: str) -> None:
    _, make_plan, api_pid, engine_pid = CASES[case]
    lines = [line for _, line in generate(make_plan(), api_pid, engine_pid)]
    for line in lines:
        m = LINE_RE.fullmatch(line)
        if m is None:
            u = UVICORN_RE.fullmatch(line)
            assert u is not None, line
            assert int(u["pid"]) == api_pid
        else:
            assert int(m["pid"]) == (api_pid if m["proc"] == "APIServer" else engine_pid), line
    # uvicorn speaks last, once the routes are listed.
    assert [UVICORN_RE.fullmatch(line) is not None for line in lines[-3:]] == [True] * 3
    assert lines[-3:] == [
        f"(APIServer pid={api_pid}) INFO:     Started server process [{api_pid}]",
        f"(APIServer pid={api_pid}) INFO:     Waiting for application startup.",
        f"(APIServer pid={api_pid}) INFO:     Application startup complete.",
    ]


@pytest.mark.parametrize("case", CASES)
def test_line_kinds_follow_the_recording(case: str) -> None:
    name, make_plan, api_pid, engine_pid = CASES[case]
    recorded = kinds(read_recording(name))
    generated = kinds([line for _, line in generate(make_plan(), api_pid, engine_pid)])
    # Both recordings stop early (the eager one before the API server finishes), so they fix a prefix.
    assert generated[: len(recorded)] == recorded
    assert generated[generated.index("api_server.py:677") :] == [
        "api_server.py:677",
        "launcher.py:37",
        ROUTE_TAG,
        UVICORN,
        UVICORN,
        UVICORN,
    ]


def _masked(line: str) -> str:
    return re.sub(r"\d\d-\d\d \d\d:\d\d:\d\d", "MM-DD HH:MM:SS", line, count=1)


@pytest.mark.parametrize("case", CASES)
def test_lines_equal_the_recording_where_the_plan_fixes_them(case: str) -> None:
    name, make_plan, api_pid, engine_pid = CASES[case]
    recorded = read_recording(name)
    generated = [line for _, line in generate(make_plan(), api_pid, engine_pid)]
    compared = 0
    for rec, gen in zip(recorded, generated, strict=False):
        rec_m, gen_m = LINE_RE.fullmatch(rec), LINE_RE.fullmatch(gen)
        assert rec_m is not None and gen_m is not None, (rec, gen)
        assert (gen_m["proc"], gen_m["level"], gen_m["tag"]) == (rec_m["proc"], rec_m["level"], rec_m["tag"])
        if rec_m["tag"] in MODELLED_TAGS:
            continue
        want, got = _masked(rec), _masked(gen)
        if len(rec) == RECORDED_WIDTH:
            got = got[: len(want)]
        assert got == want
        compared += 1
    assert compared > len(recorded) * 3 // 4


@pytest.mark.parametrize("case", CASES)
def test_offsets_run_forward_and_serving_starts_at_the_planned_total(case: str) -> None:
    _, make_plan, api_pid, engine_pid = CASES[case]
    plan = make_plan()
    out = generate(plan, api_pid, engine_pid)
    offsets = [offset for offset, _ in out]
    assert offsets == sorted(offsets)
    assert offsets[0] >= 0
    total = plan.load_seconds + plan.compile_seconds + plan.graph_seconds + plan.other_seconds
    starting = [i for i, (_, line) in enumerate(out) if "Starting vLLM server on http://" in line]
    assert len(starting) == 1
    assert out[starting[0]][0] == total
    assert out[starting[0]][1].endswith("Starting vLLM server on http://127.0.0.1:8000")
    # Nothing after serving starts takes time: routes and uvicorn follow at once.
    assert {offset for offset, _ in out[starting[0] :]} == {total}
    # ...while the API server's own start-up gap before it does.
    assert _offset_of(out, "api_server.py:673") < total


def _offset_of(out: list[tuple[float, str]], tag: str) -> float:
    (offset,) = [o for o, line in out if f"[{tag}]" in line]
    return offset


def test_phases_sit_between_their_marker_lines() -> None:
    # A startup-phase parser measures phases from these lines, so their gaps must be the plan's.
    plan = default_plan(load_seconds=30.0, compile_seconds=50.0, graph_seconds=12.0, other_seconds=40.0)
    out = generate(plan, 1, 2)
    loaded = _offset_of(out, "model_runner.py:305")
    assert loaded - _offset_of(out, "model_runner.py:284") == pytest.approx(30.0)
    assert _offset_of(out, "monitor.py:53") - loaded == pytest.approx(50.0)
    assert _offset_of(out, "model_runner.py:747") - _offset_of(
        out, "kv_cache_utils.py:2177"
    ) == pytest.approx(12.0)
    lines = [line for _, line in out]
    assert any(line.endswith("Model loading took 15.0 GiB and 30.000000 seconds") for line in lines)
    assert any(line.endswith("torch.compile took 50.00 s in total") for line in lines)
    assert any(line.endswith("Graph capturing finished in 12 secs, took 0.98 GiB") for line in lines)
    (init,) = [line for line in lines if "[core.py:340]" in line]
    took = _offset_of(out, "core.py:340") - loaded
    assert init.endswith(f"warmup model) took {took:.2f} s (compilation: 50.00 s)")


def test_eager_plans_have_no_compile_or_graph_lines() -> None:
    eager = kinds([line for _, line in generate(eager_plan(), 1, 2)])
    default = kinds([line for _, line in generate(default_plan(), 1, 2)])
    assert not COMPILE_TAGS & set(eager)
    assert set(default) >= COMPILE_TAGS
    assert "core.py:347" in eager and "core.py:340" not in eager
    assert "core.py:340" in default and "core.py:347" not in default
    # The eager-only config warnings appear in both processes, as recorded.
    assert eager.count("vllm.py:1163") == 2 and "vllm.py:1163" not in default
    (init,) = [line for _, line in generate(eager_plan(), 1, 2) if "[core.py:347]" in line]
    assert "compilation:" not in init


def test_override_and_kv_events_lines_follow_the_args() -> None:
    plain = kinds([line for _, line in generate(eager_plan(non_default_args={}), 1, 2)])
    assert "kv_cache_utils.py:2115" not in plain and "kv_events.py:348" not in plain
    full = [line for _, line in generate(eager_plan(), 1, 2)]
    (override,) = [line for line in full if "[kv_cache_utils.py:2115]" in line]
    assert re.search(r"Overriding num_gpu_blocks=\d+ with num_gpu_blocks_override=512$", override)
    assert any(line.endswith("[kv_events.py:348] Starting ZMQ publisher thread") for line in full)


def test_timestamps_are_local_time_of_one_clock_reading_plus_offset() -> None:
    clock = Clock()
    out = generate(default_plan(), 1, 2, clock)
    assert clock.calls == 1
    for offset, line in out:
        m = LINE_RE.fullmatch(line)
        if m is not None:
            assert m["stamp"] == time.strftime("%m-%d %H:%M:%S", time.localtime(START + offset))


def test_plan_values_reach_the_lines() -> None:
    routes = [("/health", "GET"), ("/v1/completions", "POST")]
    plan = default_plan(
        model="meta-llama/Llama-3.1-8B-Instruct",
        host="0.0.0.0",
        port=9001,
        architecture="Qwen2ForCausalLM",
        max_model_len=32768,
        max_num_batched_tokens=2048,
        kv_cache_tokens=1_234_567,
        routes=routes,
    )
    messages = [LINE_RE.fullmatch(line) for _, line in generate(plan, 11, 12)]
    text = [m["msg"] for m in messages if m is not None]
    assert "  █▄█▀ █     █     █     █  model   meta-llama/Llama-3.1-8B-Instruct\r" in text
    assert "Resolved architecture: Qwen2ForCausalLM" in text
    assert "Using max model len 32768" in text
    assert "Chunked prefill is enabled with max_num_batched_tokens=2048." in text
    assert "GPU KV cache size: 1,234,567 tokens" in text
    assert "Maximum concurrency for 32,768 tokens per request: 37.68x" in text
    assert "Cache the graph of compile range (1, 2048) for later use" in text
    assert "Starting vLLM server on http://0.0.0.0:9001" in text
    assert [t for t in text if t.startswith("Route: ")] == [
        "Route: /health, Methods: GET",
        "Route: /v1/completions, Methods: POST",
    ]


@pytest.mark.parametrize(
    "changes",
    [{"compile_seconds": 1.0}, {"graph_seconds": 1.0}, {"other_seconds": -1.0}, {"kv_cache_tokens": 0}],
)
def test_inconsistent_plans_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        eager_plan(**changes)
