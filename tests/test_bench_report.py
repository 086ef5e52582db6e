"""The bench HTML report: numbers equal results.json, strings escaped, banners, compare mode, CDF subsampling,
and a real headless Chromium proving the page loads from file:// with no request and no console error."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fleetgate.bench.records import RequestRecord
from fleetgate.bench.report import (
    BEHIND_TEXT,
    PALETTE,
    ResultsError,
    cdf_points,
    load_results,
    nice_ticks,
    render_report,
    write_report,
)
from fleetgate.bench.stats import SLO, by_key, summarize
from tests.browser import assert_loaded_cleanly, assert_numbers_match, open_page, resolve

PLOTS = ("ttft-cdf", "tpot-cdf", "itl-cdf", "e2e-cdf")
LOAD_PLOTS = ("throughput-vs-load", "ttft-vs-load")

# --------------------------------------------------------------------------------------------- fixtures


def make_results(
    *,
    seed: int = 0,
    levels: Sequence[tuple[str, float | None]] = (("rate", 10.0),),
    per_level: int = 120,
    behind: bool = False,
    slo: SLO | None = None,
    speed: float = 1.0,
    url: str = "http://127.0.0.1:8000/v1",
    command: str = "fleetgate bench --url http://127.0.0.1:8000/v1 --model llama-8b",
    tenants: Sequence[str] = ("alice", "bob"),
    errors: bool = True,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """A results.json of the runner's shape, numbers from the real summarize() over synthetic records."""
    rng = random.Random(seed)
    slo = slo or SLO()
    duration = 10.0
    records: list[RequestRecord] = []
    level_out: list[dict[str, Any]] = []
    for li, (mode, value) in enumerate(levels):
        load = (value or 1.0) / 10
        mine: list[RequestRecord] = []
        for k in range(per_level):
            scheduled = k * duration / per_level
            tenant = tenants[k % len(tenants)] if tenants else None
            r = RequestRecord(
                index=len(records),
                api="chat",
                tenant=tenant,
                priority=(k % 2) * 10 - 1 if tenants else None,
                scheduled=scheduled,
                sent=scheduled + rng.expovariate(1000 if not behind else 20),
                level=li,
                excluded=scheduled < warmup,
                planned_input_tokens=256,
                planned_output_tokens=64,
            )
            if errors and k % 37 == 5:
                r.status, r.error = (503, "service_unavailable") if k % 2 else (0, "connect")
            else:
                r.status = 200
                r.ttft = rng.lognormvariate(math.log(0.05 * load / speed), 0.6)
                r.completion_tokens = rng.randint(1, 80)
                r.prompt_tokens = 256
                r.itl = [
                    rng.lognormvariate(math.log(0.012 * load / speed), 0.3)
                    for _ in range(r.completion_tokens - 1)
                ]
                r.e2e = r.ttft + sum(r.itl)
                r.chunks = r.completion_tokens
            mine.append(r)
        records += mine
        level_out.append(
            {
                "label": f"{mode}={value:g}" if value is not None else mode,
                "mode": mode,
                "value": value,
                "summary": summarize(mine, duration, slo),
                "by_tenant": by_key(mine, "tenant", duration, slo),
                "by_priority": by_key(mine, "priority", duration, slo),
            }
        )
    summary = summarize(records, duration * len(levels), slo)
    met = None if slo.empty else summary["slo_attainment"] >= slo.attainment
    results = {
        "fleetgate_bench": 1,
        "config": {
            "url": url,
            "model": "llama-8b",
            "api": "chat",
            "workload": "random",
            "load": ",".join(level["label"] for level in level_out),
            "duration": duration,
            "num_requests": None,
            "seed": seed,
            "processes": 2,
            "warmup": warmup,
            "cooldown": 0.0,
            "started_at": "2025-01-02T03:04:05+00:00",
            "command": command,
            "slo": slo.to_json(),
        },
        "levels": level_out,
        "summary": summary,
        "slo": {"met": met, "attainment": None if slo.empty else summary["slo_attainment"]},
        "behind_schedule": behind,
        "requests": [r.to_json() for r in records],
    }
    # What the runner writes and the report reads: a JSON round trip (NaN survives as NaN in json).
    parsed: dict[str, Any] = json.loads(json.dumps(results))
    return parsed


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    parents: list[Element] = field(default_factory=list)

    def ancestor(self, tag: str) -> Element | None:
        return next((p for p in reversed(self.parents) if p.tag == tag), None)


class Page(HTMLParser):
    """Every element with its attributes, its text content and its ancestors."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "source", "wbr"})

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(text)
        self.close()
        assert not self._open, f"unclosed elements: {[e.tag for e in self._open]}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, parents=list(self._open))
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}, parents=list(self._open)))

    def handle_endtag(self, tag: str) -> None:
        assert self._open and self._open[-1].tag == tag, f"</{tag}> closes {self._open[-1:]}"
        self._open.pop()

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag)
            and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def with_attr(self, name: str) -> list[Element]:
        return [e for e in self.elements if name in e.attrs]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_cells(page: Page, runs: Sequence[Mapping[str, Any]]) -> int:
    """Every data-key cell: data-value is exactly the results.json number; no data-value where it has none."""
    checked = 0
    for cell in page.with_attr("data-key"):
        key = cell.attrs["data-key"]
        if key.startswith("config."):
            continue
        row = cell.ancestor("tr")
        assert row is not None, key
        results = runs[int(row.attrs["data-run"])]
        try:
            expected = resolve(results, key)
        except KeyError:
            expected = None  # e.g. p50 of a distribution with count 0
        if is_number(expected):
            assert "data-value" in cell.attrs, f"{key}: no data-value, expected {expected}"
            assert float(cell.attrs["data-value"]) == expected, key
            assert cell.text.strip() not in ("", "—"), key
        else:
            assert "data-value" not in cell.attrs, f"{key}: results.json has {expected!r}"
            assert cell.text.strip() == "—", key
        checked += 1
    return checked


# --------------------------------------------------------------------------------------------- unit tests


def test_summary_numbers_equal_results() -> None:
    results = make_results(levels=(("rate", 5.0), ("rate", 10.0), ("rate", 20.0)), slo=SLO(ttft=0.08))
    page = Page(render_report([("baseline", results)]))
    assert check_cells(page, [results]) > 200
    summary_keys = {c.attrs["data-key"] for c in page.with_attr("data-key")}
    for key in (
        "summary.requests",
        "summary.success_rate",
        "summary.request_rate",
        "summary.output_tok_s",
        "summary.ttft.p50",
        "summary.ttft.p90",
        "summary.ttft.p99",
        "summary.tpot.p50",
        "summary.tpot.p99",
        "summary.itl.p50",
        "summary.itl.p99",
        "summary.e2e.p50",
        "summary.e2e.p99",
        "summary.goodput_rate",
        "summary.slo_attainment",
        "summary.lag.p99",
        "levels.2.summary.ttft.p99",
        "levels.0.by_tenant.alice.ttft.p50",
        "levels.1.by_priority.9.request_rate",
        "summary.errors_by_status.503",
        "summary.errors_by_status.0",
        "summary.errors_by_type.connect",
    ):
        assert key in summary_keys, key


def test_numbers_are_formatted_with_units() -> None:
    results = make_results()
    page = Page(render_report([("run", results)]))
    cell = {c.attrs["data-key"]: c.text for c in page.find("td") if "data-key" in c.attrs}
    ttft = results["summary"]["ttft"]["p50"]
    assert cell["summary.ttft.p50"].endswith(" ms")
    assert float(cell["summary.ttft.p50"].removesuffix(" ms").replace(",", "")) == pytest.approx(
        ttft * 1000, rel=0.01
    )
    assert cell["summary.output_tok_s"].endswith(" tok/s")
    assert cell["summary.request_rate"].endswith(" req/s")
    assert cell["summary.success_rate"].endswith(" %")
    assert cell["summary.requests"] == f"{results['summary']['requests']:,}"


def test_config_header_shows_the_run() -> None:
    results = make_results(seed=42)
    page = Page(render_report([("run", results)]))
    shown = {
        c.attrs["data-key"]: c.text.strip()
        for c in page.with_attr("data-key")
        if c.attrs["data-key"].startswith("config.")
    }
    assert shown["config.url"] == results["config"]["url"]
    assert shown["config.model"] == "llama-8b"
    assert shown["config.seed"] == "42"
    assert shown["config.processes"] == "2"
    assert shown["config.duration"] == "10 s"
    assert shown["config.started_at"] == results["config"]["started_at"]
    assert shown["config.command"] == results["config"]["command"]
    assert shown["config.workload"] == "random"
    assert shown["config.load"] == "rate=10"


def test_strings_are_escaped() -> None:
    evil = "<script>alert('x')</script>&\"quoted\""
    results = make_results(
        url='http://h/v1?a=1&b=<2>"',
        command="fleetgate bench --model '<b>bold</b>' && echo \"done\"",
        tenants=("<img src=x onerror=alert(1)>", "bob"),
    )
    text = render_report([(evil, results)])
    assert "<script" not in text.lower()
    assert "<img" not in text.lower()
    assert "<b>" not in text
    page = Page(text)
    assert not page.find("script") and not page.find("img") and not page.find("b")
    assert page.find("title")[0].text == f"fleetgate bench: {evil}"
    shown = {c.attrs["data-key"]: c.text.strip() for c in page.with_attr("data-key")}
    assert shown["config.url"] == results["config"]["url"]
    assert shown["config.command"] == results["config"]["command"]
    rows = page.find("tr", data_tenant="<img src=x onerror=alert(1)>")
    assert rows and all(evil in r.text for r in rows)
    # The data-key of a tenant's cells holds the escaped name and still resolves in results.json.
    check_cells(page, [results])


def test_page_is_self_contained() -> None:
    text = render_report([("run", make_results())])
    page = Page(text)
    assert (
        not page.find("script") and not page.find("link") and not page.find("img") and not page.find("iframe")
    )
    assert not [e for e in page.elements if "src" in e.attrs or "href" in e.attrs]
    style = "".join(e.text for e in page.find("style"))
    assert "url(" not in style and "@import" not in style
    csp = page.find("meta", http_equiv="Content-Security-Policy")
    assert csp and "default-src 'none'" in csp[0].attrs["content"]


def test_behind_schedule_banner_only_when_behind() -> None:
    page = Page(render_report([("run", make_results())]))
    assert not page.find(data_banner="behind-schedule")
    assert BEHIND_TEXT not in "".join(e.text for e in page.elements)
    page = Page(render_report([("run", make_results(behind=True))]))
    (banner,) = page.find(data_banner="behind-schedule")
    assert BEHIND_TEXT in banner.text
    assert banner.ancestor("header") is not None
    # In compare mode it names the run that fell behind, and only that one.
    page = Page(render_report([("calm", make_results()), ("late", make_results(behind=True))]))
    (banner,) = page.find(data_banner="behind-schedule")
    assert banner.attrs["data-run"] == "1" and "late" in banner.text


def test_slo_banner() -> None:
    page = Page(render_report([("run", make_results())]))  # no SLO given
    assert not page.find(data_banner="slo-not-met") and not page.find(data_banner="slo-met")
    strict = make_results(slo=SLO(ttft=0.001, attainment=0.99))
    assert strict["slo"]["met"] is False
    page = Page(render_report([("run", strict)]))
    (banner,) = page.find(data_banner="slo-not-met")
    assert "SLOs not met" in banner.text and "99.00 %" in banner.text
    loose = make_results(slo=SLO(ttft=100.0, attainment=0.5))
    assert loose["slo"]["met"] is True
    page = Page(render_report([("run", loose)]))
    assert not page.find(data_banner="slo-not-met") and page.find(data_banner="slo-met")


def test_compare_mode_one_row_per_run() -> None:
    runs = [
        ("vllm direct", make_results(seed=1, levels=(("rate", 5.0), ("rate", 10.0)))),
        ("via gateway", make_results(seed=2, levels=(("rate", 5.0), ("rate", 10.0)), speed=0.8)),
        ("gateway + prefix", make_results(seed=3, levels=(("rate", 5.0), ("rate", 10.0)), speed=1.3)),
    ]
    page = Page(render_report(runs))
    (summary,) = page.find("table", data_table="summary")
    rows = [e for e in page.find("tr") if e.ancestor("table") is summary and "data-run" in e.attrs]
    assert [r.attrs["data-run"] for r in rows] == ["0", "1", "2"]
    assert all(label in row.text for (label, _), row in zip(runs, rows, strict=True))
    levels = [e for e in page.find("tr") if e.ancestor("table") is page.find("table", data_table="levels")[0]]
    assert len([r for r in levels if "data-run" in r.attrs]) == 6
    check_cells(page, [r for _, r in runs])
    # Every plot overlays every run, each in its own palette colour.
    for name in PLOTS + LOAD_PLOTS:
        (svg,) = page.find("svg", data_plot=name)
        series = [g for g in page.find("g", **{"class": "series"}) if svg in g.parents]
        assert {g.attrs["data-run"] for g in series} == {"0", "1", "2"}, name
        colours = {line.attrs["stroke"] for line in page.find("polyline") if svg in line.parents}
        assert colours == set(PALETTE[:3]), name
    header = [
        e.text for e in page.find("th") if e.ancestor("table") is page.find("table", **{"class": "config"})[0]
    ]
    assert all(label in header for label, _ in runs)


def test_plots_present_with_titles() -> None:
    page = Page(render_report([("run", make_results())]))
    names = [svg.attrs["data-plot"] for svg in page.find("svg")]
    assert names == list(PLOTS)  # one level: no plots against load
    for svg in page.find("svg"):
        assert svg.attrs["class"] == "plot"
        titles = [t for t in page.find("title") if t.parents and t.parents[-1] is svg]
        assert titles and titles[0].text
        texts = [t.text for t in page.find("text") if svg in t.parents]
        assert any("ms" in t for t in texts)  # axis label with unit
        assert any("run (n=" in t for t in texts)  # legend
    page = Page(render_report([("run", make_results(levels=(("concurrency", 1.0), ("concurrency", 8.0))))]))
    assert [svg.attrs["data-plot"] for svg in page.find("svg")] == list(PLOTS + LOAD_PLOTS)
    texts = [
        t.text for t in page.find("text") if page.find("svg", data_plot="throughput-vs-load")[0] in t.parents
    ]
    assert "offered load (concurrent clients)" in texts and "output tok/s" in texts


def test_cdf_uses_ok_requests_outside_warmup() -> None:
    results = make_results(per_level=60, warmup=3.0)
    ok = [
        r["ttft"]
        for r in results["requests"]
        if not r["excluded"] and r["status"] == 200 and r["error"] is None
    ]
    page = Page(render_report([("run", results)]))
    legend = [t.text for t in page.find("text") if page.find("svg", data_plot="ttft-cdf")[0] in t.parents]
    assert f"run (n={len(ok)})" in legend
    assert len(ok) == results["summary"]["ttft"]["count"]


def test_cdf_points_subsampled_keeping_ends_and_order() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(0, 1) for _ in range(100_000)]
    pts = cdf_points(values)
    assert 2 <= len(pts) <= 500
    assert pts[0] == (min(values), 1 / len(values))
    assert pts[-1] == (max(values), 1.0)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in itertools.pairwise(pts))
    small = [3.0, 1.0, 2.0]
    assert cdf_points(small) == [(1.0, 1 / 3), (2.0, 2 / 3), (3.0, 1.0)]
    assert cdf_points([]) == []
    assert len(cdf_points(values, max_points=2)) == 2


def test_large_run_stays_small() -> None:
    rng = random.Random(1)
    results = make_results(per_level=10)
    results["requests"] = [
        {
            "status": 200,
            "error": None,
            "excluded": False,
            "ttft": rng.random(),
            "tpot": rng.random() / 50,
            "e2e": 1 + rng.random(),
            "itl": [rng.random() / 50 for _ in range(10)],
        }
        for _ in range(100_000)
    ]
    text = render_report([("a", results), ("b", results)])
    assert len(text.encode()) < 400_000


def test_run_without_data() -> None:
    results = make_results(per_level=3, warmup=100.0)  # everything in the warm-up
    assert results["summary"]["requests"] == 0 and math.isnan(results["summary"]["success_rate"])
    page = Page(render_report([("empty", results)]))
    check_cells(page, [results])
    assert page.find("td", data_key="summary.ttft.p50")[0].text == "—"
    for name in PLOTS:
        svg = page.find("svg", data_plot=name)[0]
        assert any(t.text == "no data" for t in page.find("text") if svg in t.parents)
    assert page.find(data_errors="none")


def test_nice_ticks() -> None:
    assert nice_ticks(0, 1) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert nice_ticks(0, 1234) == (0, 250, 500, 750, 1000, 1250)
    assert nice_ticks(0, 95) == (0, 20, 40, 60, 80, 100)
    assert nice_ticks(0.3, 7.9) == (0, 2, 4, 6, 8)
    assert nice_ticks(0, 0.037) == (0.0, 0.01, 0.02, 0.03, 0.04)
    assert nice_ticks(5, 5) == (5.0, 6.0, 7.0, 8.0, 9.0, 10.0)


def test_load_and_write(tmp_path: Path) -> None:
    results = make_results()
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    assert load_results(run) == load_results(run / "results.json")
    assert load_results(run)["summary"]["requests"] == results["summary"]["requests"]
    path = write_report(tmp_path / "out" / "deeper", [("run", load_results(run))])
    assert path == tmp_path / "out" / "deeper" / "report.html"
    assert path.read_text().startswith("<!DOCTYPE html>")

    with pytest.raises(ResultsError, match=r"has no results\.json"):
        load_results(tmp_path / "out")
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_results(bad)
    bad.write_text('{"hello": 1}')
    with pytest.raises(ResultsError, match="not a fleetgate bench results file"):
        load_results(bad)
    bad.write_text('{"fleetgate_bench": 99}')
    with pytest.raises(ResultsError, match="format 99"):
        load_results(bad)
    bad.write_text('{"fleetgate_bench": 1, "config": {}, "summary": {}}')
    with pytest.raises(ResultsError, match="'levels'"):
        load_results(bad)
    assert issubclass(ResultsError, ValueError)
    with pytest.raises(ValueError):
        render_report([])


# --------------------------------------------------------------------------------------------- real browser


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    runs = [
        ("vllm direct", make_results(seed=1, levels=(("rate", 5.0), ("rate", 10.0), ("rate", 20.0)))),
        (
            'gateway <b>"new"</b>',
            make_results(
                seed=2, levels=(("rate", 5.0), ("rate", 10.0), ("rate", 20.0)), speed=0.8, behind=True
            ),
        ),
    ]
    report = write_report(tmp_path / "report", runs)
    visit = open_page(tmp_path, report)
    seen = visit.seen

    assert_loaded_cleanly(visit)
    assert seen["scripts"] == 0
    # Every plot is there, titled, drawn with real size and one series per run (two per run against load).
    assert [p["name"] for p in seen["plots"]] == list(PLOTS + LOAD_PLOTS)
    for plot in seen["plots"]:
        width, height = plot["size"]
        assert width > 300 and height > 200, plot
        assert plot["title"], plot
        assert plot["series"] == (4 if plot["name"] == "ttft-vs-load" else 2), plot
    assert [b[0] for b in seen["banners"]] == ["behind-schedule"]
    assert BEHIND_TEXT in seen["banners"][0][1] and 'gateway <b>"new"</b>' in seen["banners"][0][1]

    compared = assert_numbers_match(visit, [r for _, r in runs])
    assert compared > 300
    assert visit.screenshot.stat().st_size > 10_000
