"""The report as a person reads it, from a results file built by hand (not by the code under test): no false
"fell behind" banner at low rates, a banner naming the level that was late, the pooled row of a sweep said to
be one, what ITL means, the workload's shape, measured tokens per request and prefix-cache hits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleetgate.bench.report import load_results, write_report
from tests.browser import assert_loaded_cleanly, open_page

RATES = (2.0, 4.0, 8.0)
PER_LEVEL = 20  # 10 s per level: 2 req/s gives 20 requests


def _summary(ok: int, rate: float) -> dict[str, Any]:
    dist = {
        "count": ok,
        "mean": 0.05,
        "min": 0.01,
        "max": 0.2,
        "p50": 0.04,
        "p90": 0.09,
        "p95": 0.1,
        "p99": 0.15,
    }
    return {
        "requests": ok, "ok": ok, "errors": 0, "success_rate": 1.0,
        "errors_by_status": {}, "errors_by_type": {},
        "duration_s": 10.0, "request_rate": rate, "output_tok_s": rate * 64, "total_tok_s": rate * 2464,
        "prompt_tokens": ok * 2400, "completion_tokens": ok * 64, "ttft": dist, "tpot": dist,
        "itl": {**dist, "p50": 0.0}, "e2e": dist, "lag": dist, "goodput_rate": rate, "slo_attainment": 1.0,
    }  # fmt: skip


def hand_built(late_level: int | None) -> dict[str, Any]:
    """Three levels at 2, 4 and 8 req/s. Each level's first two sends (one per generator process) are 40 ms
    late, as connection setup makes them; `late_level` has a third of its sends 30 ms late as well."""
    requests: list[dict[str, Any]] = []
    levels: list[dict[str, Any]] = []
    for li, rate in enumerate(RATES):
        n = int(PER_LEVEL * rate / 2)
        for k in range(n):
            scheduled = k / rate
            lag = 0.04 if k < 2 else 0.03 if (li == late_level and k % 3 == 0) else 0.001
            requests.append({
                "index": len(requests), "api": "chat", "tenant": None, "priority": None, "level": li,
                "scheduled": scheduled, "sent": scheduled + lag, "status": 200, "error": None,
                "error_message": None, "ttft": 0.05, "e2e": 0.5,
                "prompt_tokens": 2400, "completion_tokens": 64,
                "chunks": 40, "itl": [0.0, 0.0, 0.012] * 21, "excluded": False, "lag": lag, "tpot": 0.0071,
            })  # fmt: skip
        levels.append(
            {"label": f"rate={rate:g}", "mode": "rate", "value": rate, "summary": _summary(n, rate)}
        )
    return {
        "fleetgate_bench": 1,
        "config": {
            "url": "http://127.0.0.1:8000/v1",
            "model": "llama-8b",
            "api": "chat",
            "workload": "shared-prefix",
            "workload_settings": {
                "kind": "shared-prefix",
                "groups": 4,
                "prompts_per_group": 25,
                "system_len": 2000,
                "question_len": 200,
                "output_len": "64",
                "language": "en",
            },
            "load": "rate=2,rate=4,rate=8",
            "duration": 10.0,
            "num_requests": None,
            "seed": 0,
            "processes": 2,
            "warmup": 0.0,
            "cooldown": 0.0,
            "tokenize": "prompt lengths are in the target's tokens",
            "started_at": "2026-12-06T18:00:00+00:00",
            "command": "fleetgate bench ...",
            "slo": None,
        },
        "levels": levels,
        "summary": _summary(len(requests), 4.67),
        "slo": {"met": None},
        "behind_schedule": True,  # what the old rule wrote: the report judges from the requests
        "prefix_cache": {
            "source": "http://127.0.0.1:8000/metrics",
            "available": True,
            "queried_tokens": 168000.0,
            "hit_tokens": 134400.0,
            "hit_rate": 0.8,
        },
        "requests": requests,
    }


def test_report_reads_right_in_a_browser(tmp_path: Path) -> None:
    files = []
    for name, late in (("steady", None), ("saturated", 2)):
        path = tmp_path / name / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps(hand_built(late)))
        files.append((name, load_results(path)))
    visit = open_page(tmp_path, write_report(tmp_path / "report", files))
    seen = visit.seen
    assert_loaded_cleanly(visit)

    # The steady run's few slow first sends raise no banner; the saturated run's names its level.
    banners = seen["banners"]
    assert [b[0] for b in banners] == ["behind-schedule"]
    assert banners[0][1].startswith("saturated: Warning: the load generator fell behind")
    assert "at rate=8 (schedule lag p99 30.0 ms)" in banners[0][1]

    assert "All levels pooled" in seen["headings"]
    notes = dict(seen["notes"])
    assert "not a capacity figure" in notes["pooled"]
    assert "Chunks that arrive in the same network read have a gap of 0 ms" in notes["itl"]

    rows = seen["rows"]
    assert ["tokens-per-request", "prompt 2,400, completion 64 (means over 140 answered)"] in rows
    assert ["prefix-cache", "80.00 % of prompt tokens were hits (134,400 of 168,000; all clients)"] in rows
    shape = next(c["text"] for c in seen["cells"] if c["key"] == "config.workload_settings")
    assert shape == "groups 4, prompts per group 25, system prompt tokens 2000, question tokens 200, " \
        "output tokens 64, language en"  # fmt: skip

    itl = next(p for p in seen["plots"] if p["name"] == "itl-cdf")
    assert any("67% zero gaps not drawn" in text for text in itl["legend"])
