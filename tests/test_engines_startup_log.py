"""Startup phases read off vLLM's log: the recordings of a real vLLM 0.26.0 (tests/data), the lines a
download and a sharded load add, and any text at all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetgate.engines.base import Phase
from fleetgate.engines.registry import ENGINES
from fleetgate.scaling.worker import StartupTimeline

DATA = Path(__file__).parent / "data"
VLLM, EMBEDDED = ENGINES["vllm"], ENGINES["embedded"]
STAMP = re.compile(r" (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ")


def replay(lines: list[str]) -> StartupTimeline:
    """Feed lines at the times their own stamps give (a line without one, at the last stamp seen)."""
    clock = 0.0
    timeline: StartupTimeline | None = None
    for line in lines:
        if m := STAMP.search(line):
            _, _, h, mi, s = (int(g) for g in m.groups())
            clock = h * 3600 + mi * 60 + s
        if timeline is None:
            timeline = StartupTimeline(clock)
        timeline.feed(VLLM.parse_line(line), clock)
    assert timeline is not None
    return timeline


def phases(t: StartupTimeline) -> list[tuple[Phase, float]]:
    return [(s.phase, s.start) for s in t.segments]


def hms(h: int, m: int, s: int) -> float:
    return h * 3600 + m * 60 + s


def test_default_mode_recording() -> None:
    t = replay((DATA / "startup_log_default.txt").read_text().splitlines())
    assert phases(t) == [
        (Phase.INIT, hms(12, 31, 1)),
        (Phase.LOAD, hms(12, 31, 27)),  # 'Loading model from scratch...'
        (Phase.COMPILE, hms(12, 31, 28)),  # 'Model loading took 15.0 GiB and 1.576930 seconds'
        (Phase.READY, hms(12, 32, 14)),  # 'Starting vLLM server on http://127.0.0.1:8000'
    ]
    assert t.durations() == {Phase.INIT: 26.0, Phase.LOAD: 1.0, Phase.COMPILE: 46.0}


def test_eager_recording_stops_before_the_server_starts() -> None:
    t = replay((DATA / "startup_log_eager_tools.txt").read_text().splitlines())
    assert phases(t) == [
        (Phase.INIT, hms(12, 52, 20)),
        (Phase.LOAD, hms(12, 53, 0)),
        (Phase.COMPILE, hms(12, 53, 1)),  # eager: profiling and warm-up, no torch.compile
    ]
    assert t.ready_at is None


def test_download_is_dated_back_and_shards_show_progress() -> None:
    pre = "(EngineCore pid=7) INFO 01-02 10:00:{:02d} [x.py:1] "
    t = replay(
        [
            pre.format(0) + "Loading model from scratch...",
            pre.format(30) + "Time spent downloading weights for org/model: 25.000000 seconds",
            pre.format(31)
            + "Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:01<00:01,  1.5it/s]",
        ]
    )
    assert phases(t)[1:] == [
        (Phase.LOAD, hms(10, 0, 0)),
        (Phase.DOWNLOAD, hms(10, 0, 5)),
        (Phase.LOAD, hms(10, 0, 30)),
    ]
    assert t.progress == 0.5
    t.feed(VLLM.parse_line(pre.format(33) + "Model loading took 15.0 GiB and 33.1 seconds"), hms(10, 0, 33))
    t.finish(hms(10, 0, 40))
    assert t.durations() == {Phase.INIT: 0.0, Phase.LOAD: 8.0, Phase.DOWNLOAD: 25.0, Phase.COMPILE: 7.0}
    assert t.total == 40.0


def test_a_download_longer_than_the_log_so_far_starts_where_the_last_phase_did() -> None:
    t = StartupTimeline(100.0)
    t.feed(VLLM.parse_line("Time spent downloading weights for m: 500.0 seconds"), 130.0)
    assert phases(t) == [(Phase.INIT, 100.0), (Phase.DOWNLOAD, 100.0), (Phase.LOAD, 130.0)]


@pytest.mark.parametrize(
    ("line", "phase", "progress"),
    [
        (
            "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE):  40%|████      | 27/67",
            Phase.COMPILE,
            0.4,
        ),
        ("INFO:     Application startup complete.", Phase.READY, None),
        ("Starting to load model meta-llama/Llama-3.1-8B-Instruct...", Phase.LOAD, None),
    ],
)
def test_other_vllm_lines(line: str, phase: Phase, progress: float | None) -> None:
    (event,) = VLLM.parse_line(line)
    assert (event.phase, event.progress) == (phase, progress)


def test_embedded_lines() -> None:
    assert EMBEDDED.parse_line("Fetching 4 files:  25%|██▌       | 1/4")[0].phase is Phase.DOWNLOAD
    (load,) = EMBEDDED.parse_line("Loading checkpoint shards: 100%|██████████| 2/2 [00:01<00:00]")
    assert (load.phase, load.progress) == (Phase.LOAD, 1.0)
    # The engine's own phase lines (docs/embedded.md).
    tag = "INFO 11-21 15:50:32 [fleetgate.embedded] phase="
    assert EMBEDDED.parse_line(tag + "load model=/m device=cpu")[0].phase is Phase.LOAD
    assert EMBEDDED.parse_line(tag + "loaded seconds=0.11")[0].phase is Phase.WARMUP
    assert EMBEDDED.parse_line(tag + "kv_cache blocks=8192")[0].phase is Phase.WARMUP
    assert EMBEDDED.parse_line(tag + "ready url=http://127.0.0.1:8000 model=demo")[0].phase is Phase.READY
    assert EMBEDDED.parse_line("some other line") == []


@given(st.text())
def test_any_text_parses_to_sane_events(text: str) -> None:
    t = StartupTimeline(0.0)
    for parse in (VLLM.parse_line, EMBEDDED.parse_line):
        events = parse(text)
        t.feed(events, 1.0)
        for e in events:
            assert e.ago >= 0
            assert e.progress is None or 0.0 <= e.progress <= 1.0
    starts = [s.start for s in t.segments]
    assert starts == sorted(starts)
