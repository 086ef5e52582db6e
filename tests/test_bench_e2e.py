"""`fleetgate bench` end to end: the CLI against a real simulator, each load mode, the report in a browser."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.browser import assert_loaded_cleanly, assert_numbers_match, open_page
from tests.conftest import SimFactory, SimProcess


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import spawn_sim

    proc = spawn_sim(
        tmp_path_factory.mktemp("sim"), "--served-model-name", "m", "--time-scale", "50", "--seed", "1"
    )
    yield proc
    proc.stop()


def bench(sim: SimProcess, out: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "fleetgate",
        "bench",
        "--url",
        f"{sim.url}/v1",
        "--model",
        "m",
        "--out",
        str(out),
    ]
    done = subprocess.run([*cmd, *flags], capture_output=True, text=True, timeout=120)
    results = out / "results.json"
    assert results.exists(), done.stdout + done.stderr
    return done.returncode, json.loads(results.read_text())


def test_closed_loop_keeps_its_concurrency_and_count(sim: SimProcess, tmp_path: Path) -> None:
    code, res = bench(
        sim, tmp_path, "--load", "concurrency=4", "--num-requests", "40", "--input-len", "100",
        "--output-len", "12", "--processes", "2",
    )  # fmt: skip
    assert code == 0
    reqs = res["requests"]
    assert len(reqs) == 40 and all(r["status"] == 200 and r["error"] is None for r in reqs)
    assert all(r["completion_tokens"] == 12 for r in reqs)  # ignore_eos: as planned
    assert all(abs(r["prompt_tokens"] - 100) <= 8 for r in reqs)  # sizes in the target's tokens
    # Never more than 4 requests in flight at once.
    edges = sorted([(r["sent"], 1) for r in reqs] + [(r["sent"] + r["e2e"], -1) for r in reqs])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    assert peak <= 4
    s = res["summary"]
    assert s["ok"] == 40 and s["ttft"]["count"] == 40 and s["itl"]["count"] == 40 * 11


def test_constant_rate_keeps_its_schedule(sim: SimProcess, tmp_path: Path) -> None:
    code, res = bench(
        sim, tmp_path, "--load", "rate=40", "--duration", "2", "--api", "completions", "--token-ids",
        "--input-len", "32", "--output-len", "4",
    )  # fmt: skip
    assert code == 0
    reqs = sorted(res["requests"], key=lambda r: r["scheduled"])
    assert len(reqs) == 80
    assert [round(r["scheduled"], 6) for r in reqs] == [round(i / 40, 6) for i in range(80)]
    assert all(r["prompt_tokens"] == 32 for r in reqs)  # token-id prompts are exact
    assert res["summary"]["lag"]["p50"] < 0.005


def test_poisson_sweep_runs_each_level(sim: SimProcess, tmp_path: Path) -> None:
    code, res = bench(
        sim, tmp_path, "--load", "sweep=poisson:20,60", "--duration", "2", "--output-len", "4",
        "--input-len", "64", "--seed", "3",
    )  # fmt: skip
    assert code == 0
    assert [lv["label"] for lv in res["levels"]] == ["poisson=20", "poisson=60"]
    counts = Counter(r["level"] for r in res["requests"])
    assert 20 <= counts[0] <= 65 and 80 <= counts[1] <= 170
    assert res["levels"][1]["summary"]["request_rate"] > res["levels"][0]["summary"]["request_rate"]


def test_trace_replay_follows_timestamps(sim: SimProcess, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    stamps = [0.0, 0.05, 0.05, 0.4, 0.9]
    trace.write_text(
        "\n".join(json.dumps({"timestamp": t, "input_tokens": 50, "output_tokens": 5}) for t in stamps) + "\n"
    )
    code, res = bench(sim, tmp_path / "out", "--workload", f"trace:{trace}")
    assert code == 0
    reqs = sorted(res["requests"], key=lambda r: r["scheduled"])
    assert [r["scheduled"] for r in reqs] == pytest.approx(stamps)
    # Never early (beyond the event loop's millisecond timers); how late on a busy machine is for
    # benchmarks/bench_schedule.py to measure.
    assert all(r["sent"] >= r["scheduled"] - 2e-3 for r in reqs)
    assert all(r["completion_tokens"] == 5 for r in reqs)


def test_multi_turn_history_grows_and_tenants_split(sim: SimProcess, tmp_path: Path) -> None:
    code, res = bench(
        sim, tmp_path, "--workload", "multi-turn", "--load", "concurrency=3", "--num-requests", "30",
        "--sessions", "3", "--turns", "4", "--output-len", "20", "--processes", "1",
        "--tenant", "web:key-web:10:3", "--tenant", "batch:key-batch:-1:1",
    )  # fmt: skip
    assert code == 0
    by_session: dict[str, list[dict[str, Any]]] = {}
    for r in res["requests"]:
        by_session.setdefault(r["session"], []).append(r)
    for turns in by_session.values():
        turns.sort(key=lambda r: r["turn"])
        prompts = [r["prompt_tokens"] for r in turns]
        assert prompts == sorted(prompts) and len(set(prompts)) == len(prompts)  # history only grows
        for a, b in itertools.pairwise(turns):
            assert b["sent"] >= a["sent"] + a["e2e"] - 1e-3  # a turn goes after the last one answered
    tenants = Counter(r["tenant"] for r in res["requests"])
    assert set(tenants) == {"web", "batch"} and tenants["web"] > tenants["batch"]
    assert set(res["levels"][0]["by_tenant"]) == {"web", "batch"}
    assert set(res["levels"][0]["by_priority"]) == {"10", "-1"}


def test_errors_are_counted_by_status_and_type(sim_factory: SimFactory, tmp_path: Path) -> None:
    flaky = sim_factory("--served-model-name", "m", "--time-scale", "50", "--fault-error-rate", "503=0.5")
    code, res = bench(flaky, tmp_path, "--load", "concurrency=4", "--num-requests", "40", "--output-len", "3")
    assert code == 0
    s = res["summary"]
    assert s["errors"] + s["ok"] == 40 and 5 <= s["errors"] <= 35
    assert s["errors_by_status"] == {"503": s["errors"]}
    assert s["errors_by_type"] == {"ServiceUnavailableError": s["errors"]}


def test_unmet_slo_exits_3_and_met_slo_exits_0(sim: SimProcess, tmp_path: Path) -> None:
    flags = ("--load", "concurrency=2", "--num-requests", "6", "--output-len", "3")
    code, res = bench(sim, tmp_path / "a", *flags, "--slo", "ttft=1us")
    assert code == 3 and res["slo"]["met"] is False
    code, res = bench(sim, tmp_path / "b", *flags, "--slo", "ttft=30s,tpot=10s")
    assert code == 0 and res["slo"]["met"] is True and res["summary"]["slo_attainment"] == 1.0


def test_bad_flags_get_clear_errors(sim: SimProcess, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "fleetgate", "bench", "--url", f"{sim.url}/v1", "--model", "m"]
    for flags, words in (
        (["--load", "burst=3", "--num-requests", "1"], "unknown mode"),
        (["--num-requests", "1", "--duration", "1"], "exactly one of"),
        (["--num-requests", "1", "--input-len", "gauss:1"], "input_len"),
        (["--num-requests", "1", "--slo", "latency=1"], "--slo"),
    ):
        done = subprocess.run([*base, *flags, "--out", str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == 2, done.stdout + done.stderr
        assert words in done.stdout + done.stderr


def test_report_opens_in_chromium_with_the_numbers_of_results_json(sim: SimProcess, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, res = bench(
        sim, out, "--load", "sweep=rate:10,30", "--duration", "1.5", "--output-len", "8", "--input-len", "64"
    )
    assert code == 0
    visit = open_page(tmp_path, out / "report.html")
    assert_loaded_cleanly(visit)
    names = [p["name"] for p in visit.seen["plots"]]
    assert {"ttft-cdf", "itl-cdf", "e2e-cdf", "throughput-vs-load", "ttft-vs-load"} <= set(names)
    assert all(p["size"][0] > 300 and p["size"][1] > 200 for p in visit.seen["plots"])
    assert assert_numbers_match(visit, [res]) > 30
    compare = tmp_path / "cmp"
    done = subprocess.run(
        [sys.executable, "-m", "fleetgate", "bench", "compare", str(out), str(out), "--out", str(compare)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and (compare / "report.html").exists()
