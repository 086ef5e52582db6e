"""The bench report's tables: summaries (per run, per load level, per tenant or priority) and errors.

Every numeric cell carries `data-key` (its path in results.json) and `data-value` (the raw number).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetgate.bench.report_format import Run, Unit, cell, esc, fmt, levels_of, lookup, number, swatch

# (group heading, column heading, path in a summary, unit)
_COLUMNS: tuple[tuple[str, str, tuple[str, ...], Unit], ...] = (
    ("", "requests", ("requests",), "int"),
    ("", "success", ("success_rate",), "pct"),
    ("", "req/s", ("request_rate",), "req/s"),
    ("", "output tok/s", ("output_tok_s",), "tok/s"),
    ("TTFT", "p50", ("ttft", "p50"), "ms"),
    ("TTFT", "p90", ("ttft", "p90"), "ms"),
    ("TTFT", "p99", ("ttft", "p99"), "ms"),
    ("TPOT", "p50", ("tpot", "p50"), "ms"),
    ("TPOT", "p99", ("tpot", "p99"), "ms"),
    ("ITL", "p50", ("itl", "p50"), "ms"),
    ("ITL", "p99", ("itl", "p99"), "ms"),
    ("e2e", "p50", ("e2e", "p50"), "ms"),
    ("e2e", "p99", ("e2e", "p99"), "ms"),
    ("", "goodput", ("goodput_rate",), "req/s"),
    ("", "SLO attainment", ("slo_attainment",), "pct"),
    ("schedule lag", "p99", ("lag", "p99"), "ms"),
)

# A summary row: (run index, extra label cells, data-key prefix, summary dict)
_Row = tuple[int, tuple[tuple[str, str], ...], str, object]


def summary_table(name: str, rows: Sequence[_Row], runs: Sequence[Run], extra: Sequence[str] = ()) -> str:
    """One row per (run, ...); `extra` names label columns after the run (each row supplies (attr, text))."""
    groups: list[tuple[str, int]] = []
    for group, *_ in _COLUMNS:
        if group and groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1] + 1)
        else:
            groups.append((group, 1))
    top = ['<th scope="col" rowspan="2">run</th>'] + [
        f'<th scope="col" rowspan="2">{esc(x)}</th>' for x in extra
    ]
    sub: list[str] = []
    index = 0
    for group, span in groups:
        if group:
            top.append(f'<th scope="colgroup" colspan="{span}">{esc(group)}</th>')
            sub += [f'<th scope="col">{esc(c[1])}</th>' for c in _COLUMNS[index : index + span]]
        else:
            top.append(f'<th scope="col" rowspan="2">{esc(_COLUMNS[index][1])}</th>')
        index += span
    out = [
        f'<div class="scroll"><table class="summary" data-table="{esc(name)}"><thead>',
        f"<tr>{''.join(top)}</tr><tr>{''.join(sub)}</tr></thead><tbody>",
    ]
    for run, labels, prefix, summary in rows:
        attrs = "".join(f' data-{a}="{esc(t)}"' for a, t in labels)
        cells = "".join(
            cell(
                f"{prefix}.{'.'.join(path)}",
                lookup(summary if isinstance(summary, Mapping) else None, path),
                unit,
            )
            for _, _, path, unit in _COLUMNS
        )
        label_cells = "".join(f"<td>{esc(t)}</td>" for _, t in labels)
        head = f'<th scope="row">{swatch(run)}{esc(runs[run][0])}</th>'
        out.append(f'<tr data-run="{run}"{attrs}>{head}{label_cells}{cells}</tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def levels_section(runs: Sequence[Run]) -> list[str]:
    if all(len(levels_of(r)) < 2 for _, r in runs):
        return []
    rows: list[_Row] = [
        (i, (("level", str(level.get("label", j))),), f"levels.{j}.summary", level.get("summary"))
        for i, (_, r) in enumerate(runs)
        for j, level in enumerate(levels_of(r))
    ]
    return [
        '<section id="levels"><h2>Load levels</h2>',
        summary_table("levels", rows, runs, ["level"]),
        "</section>",
    ]


def groups_section(runs: Sequence[Run], field: str, heading: str, what: str) -> list[str]:
    rows: list[_Row] = []
    for i, (_, r) in enumerate(runs):
        for j, level in enumerate(levels_of(r)):
            groups = level.get(field)
            if not isinstance(groups, Mapping):
                continue
            for name, summary in groups.items():
                labels = (("level", str(level.get("label", j))), (what, str(name)))
                rows.append((i, labels, f"levels.{j}.{field}.{name}", summary))
    if not rows:
        return []
    table = summary_table(field, rows, runs, ["level", what])
    return [f'<section id="{field.replace("_", "-")}"><h2>{esc(heading)}</h2>', table, "</section>"]


def errors_section(runs: Sequence[Run]) -> list[str]:
    out = ['<section id="errors"><h2>Errors</h2>']
    any_errors = False
    for field, heading, what in (
        ("errors_by_status", "By HTTP status", "status"),
        ("errors_by_type", "By type", "type"),
    ):
        rows: list[str] = []
        for i, (label, r) in enumerate(runs):
            summary = r.get("summary")
            counts = lookup(summary if isinstance(summary, Mapping) else None, (field,))
            total = number(lookup(summary if isinstance(summary, Mapping) else None, ("requests",)))
            if not isinstance(counts, Mapping):
                continue
            for name, count in sorted(counts.items(), key=lambda kv: (-(number(kv[1]) or 0), str(kv[0]))):
                shown = (
                    f"{name} (no response)" if field == "errors_by_status" and str(name) == "0" else str(name)
                )
                n = number(count)
                share = n / total if n is not None and total else None
                rows.append(
                    f'<tr data-run="{i}" data-{what}="{esc(name)}">'
                    f'<th scope="row">{swatch(i)}{esc(label)}</th>'
                    f"<td>{esc(shown)}</td>{cell(f'summary.{field}.{name}', count, 'int')}"
                    f'<td class="num">{esc("—" if share is None else fmt(share, "pct"))}</td></tr>'
                )
        if rows:
            any_errors = True
            out.append(
                f'<div class="errors"><h3>{esc(heading)}</h3><table class="errors" data-table="{field}">'
                f'<thead><tr><th scope="col">run</th><th scope="col">{esc(what)}</th>'
                '<th scope="col">count</th><th scope="col">share of requests</th></tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table></div>"
            )
    if not any_errors:
        out.append('<p class="none" data-errors="none">No errors.</p>')
    out.append("</section>")
    return out
