"""`fleetgate bench`: prepare a run, show it live, write results.json and report.html, judge the SLO."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import resource
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from fleetgate.bench.load import Level
from fleetgate.bench.records import RequestRecord
from fleetgate.bench.report import load_results, write_report
from fleetgate.bench.runner import RunConfig, run_level
from fleetgate.bench.stats import SLO, by_key, late_levels, summarize
from fleetgate.bench.target import measure_ratio, prefix_cache_delta, read_prefix_counters, server_root

# Exit codes a script can branch on.
EXIT_SLO_MISSED = 3
EXIT_ALL_FAILED = 4
# Error kinds listed in the terminal when requests failed, each with one example message.
ERROR_LINES = 5


def _progress_table(level: Level, elapsed: float, totals: list[int], planned: str) -> Table:
    sent, done, failed, tokens = totals
    table = Table(title=f"fleetgate bench: {level.label} ({planned})", expand=False)
    for col in ("elapsed", "sent", "done", "failed", "in flight", "req/s", "out tok/s"):
        table.add_column(col, justify="right")
    rate = done / elapsed if elapsed > 0 else 0.0
    tok_s = tokens / elapsed if elapsed > 0 else 0.0
    table.add_row(
        f"{elapsed:,.1f} s",
        f"{sent:,}",
        f"{done:,}",
        f"{failed:,}",
        f"{sent - done:,}",
        f"{rate:,.1f}",
        f"{tok_s:,.0f}",
    )
    return table


def raise_fd_limit() -> None:
    """Every concurrent stream is a socket: take the hard limit on open files, not the soft default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _target_key(cfg: RunConfig) -> str | None:
    """The key for the target's own routes: --api-key, else the first tenant's (a gateway with keys)."""
    return cfg.api_key or next((t.api_key for t in cfg.workload.tenants if t.api_key), None)


def run(cfg: RunConfig, slo: SLO, out_dir: Path, console: Console, metrics_url: str | None = None) -> int:
    """Run every level, write the results and the report; the process exit code. `metrics_url`: where the
    target's vLLM-format /metrics is (default: the target's own), read before and after for prefix hits."""
    raise_fd_limit()
    key = _target_key(cfg)
    ratio, tokenize_note = (
        (1.0, "token-id prompts of exact length")
        if cfg.workload.token_ids
        else measure_ratio(cfg.url, cfg.model, key)
    )
    cfg = dataclasses.replace(cfg, sizer_ratio=ratio)
    console.print(f"[dim]{tokenize_note}[/dim]")
    metrics_url = metrics_url or f"{server_root(cfg.url)}/metrics"
    prefix_before = read_prefix_counters(metrics_url, key)
    planned = f"{cfg.duration:g} s" if cfg.duration is not None else f"{cfg.num_requests} requests"
    all_records: list[RequestRecord] = []
    levels: list[dict[str, Any]] = []
    total_duration = 0.0
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        for i, level in enumerate(cfg.levels):

            def show(level: Level, elapsed: float, totals: list[int]) -> None:
                live.update(_progress_table(level, elapsed, totals, planned))

            records, duration = run_level(cfg, i, show)
            total_duration += duration
            all_records += records
            levels.append(
                {
                    "label": level.label,
                    "mode": level.mode,
                    "value": level.value if level.mode != "trace" else None,
                    "summary": summarize(records, duration, slo),
                    "by_tenant": by_key(records, "tenant", duration, slo),
                    "by_priority": by_key(records, "priority", duration, slo),
                }
            )
    prefix = prefix_cache_delta(metrics_url, prefix_before, read_prefix_counters(metrics_url, key))
    summary = summarize(all_records, total_duration, slo)
    requests = [r.to_json() for r in all_records]
    late = late_levels(requests, cfg.processes)
    met = None if slo.empty else bool(summary["slo_attainment"] >= slo.attainment)
    results = {
        "fleetgate_bench": 1,
        "config": {
            "url": cfg.url,
            "model": cfg.model,
            "api": cfg.workload.api,
            "workload": cfg.workload.kind,
            "workload_settings": cfg.workload.model_dump(mode="json", exclude={"tenants"}),
            "tenants": [t.name for t in cfg.workload.tenants],
            "load": ",".join(lv.label for lv in cfg.levels),
            "duration": cfg.duration,
            "num_requests": cfg.num_requests,
            "seed": cfg.seed,
            "processes": cfg.processes,
            "warmup": cfg.warmup,
            "cooldown": cfg.cooldown,
            "tokenizer_ratio": ratio,
            "tokenize": tokenize_note,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": shlex.join(["fleetgate", *sys.argv[1:]]),
            "slo": slo.to_json(),
        },
        "levels": levels,
        "summary": summary,
        "slo": {**slo.to_json(), "met": met, "attainment": None if slo.empty else summary["slo_attainment"]},
        "behind_schedule": bool(late),
        "late_levels": {cfg.levels[i].label: lag for i, lag in late.items()},
        "prefix_cache": prefix,
        "requests": requests,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_bytes(orjson.dumps(_finite(results), option=orjson.OPT_INDENT_2))
    report = write_report(out_dir, [(out_dir.name, _finite(results))])
    console.print(summary_table(levels))
    if late:
        where = ", ".join(f"{cfg.levels[i].label} (lag p99 {lag * 1000:.0f} ms)" for i, lag in late.items())
        console.print(
            f"[yellow]the load generator fell behind its schedule at {where}: add --processes or lower "
            "the load[/yellow]"
        )
    if prefix.get("hit_rate") is not None:
        console.print(
            f"prefix cache (from {metrics_url}): {prefix['hit_rate']:.1%} of prompt tokens were hits"
        )
    _print_errors(all_records, console)
    console.print(f"results: {out_dir / 'results.json'}\nreport:  {report}")
    if all_records and not any(r.ok for r in all_records):
        console.print(f"[red]every one of the {len(all_records)} requests failed[/red]")
        return EXIT_ALL_FAILED
    if met is False:
        console.print(
            f"[red]SLO not met: {summary['slo_attainment']:.1%} of requests met it, "
            f"{slo.attainment:.1%} required[/red]"
        )
        return EXIT_SLO_MISSED
    return 0


def _print_errors(records: list[RequestRecord], console: Console) -> None:
    """Failed requests by kind, each with one example message: the terminal says what went wrong."""
    failed = [r for r in records if not r.ok]
    if not failed:
        return
    kinds = Counter((r.status, r.error or f"http_{r.status}") for r in failed)
    console.print(f"[red]{len(failed)} of {len(records)} requests failed[/red]:")
    for (status, kind), count in kinds.most_common(ERROR_LINES):
        example = next((r.error_message for r in failed if (r.status, r.error or f"http_{r.status}") ==
                        (status, kind) and r.error_message), "")  # fmt: skip
        where = "no response" if status == 0 else f"HTTP {status}"
        line = f"  {count:>6} x {kind} ({where})" + (f": {example[:200]}" if example else "")
        console.print(line, markup=False, highlight=False)


def _finite(obj: Any) -> Any:
    """JSON has no NaN: empty aggregates become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def summary_table(levels: list[dict[str, Any]]) -> Table:
    table = Table(title="results")
    cols = (
        "load",
        "ok/total",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "ITL p99",
        "e2e p99",
    )
    for col in (*cols, "lag p99"):
        table.add_column(col, justify="right")

    def ms(d: dict[str, Any], key: str) -> str:
        v = d.get(key)
        return f"{v * 1000:,.1f} ms" if isinstance(v, float) and math.isfinite(v) else "-"

    for lv in levels:
        s = lv["summary"]
        table.add_row(
            lv["label"],
            f"{s['ok']}/{s['requests']}",
            f"{s['request_rate']:,.1f}",
            f"{s['output_tok_s']:,.0f}",
            ms(s["ttft"], "p50"),
            ms(s["ttft"], "p99"),
            ms(s["tpot"], "p50"),
            ms(s["itl"], "p99"),
            ms(s["e2e"], "p99"),
            ms(s["lag"], "p99"),
        )
    return table


def compare(dirs: list[Path], out: Path, console: Console) -> Path:
    runs = [(d.name if d.is_dir() else d.parent.name, load_results(d)) for d in dirs]
    out.mkdir(parents=True, exist_ok=True)
    path = write_report(out, runs)
    console.print(f"comparison of {len(runs)} runs: {path}")
    return path
