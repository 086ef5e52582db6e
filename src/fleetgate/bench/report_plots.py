"""The bench report's plots as inline SVG: latency CDFs, throughput and TTFT against offered load."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetgate.bench.report_format import Run, color, dash, esc, fmt, levels_of, lookup, number

CDF_POINTS = 500


def cdf_points(values: Iterable[float], max_points: int = CDF_POINTS) -> list[tuple[float, float]]:
    """The empirical CDF of `values` as (x, fraction of values <= x), at most `max_points` points evenly
    spaced in rank; the smallest and largest values are always kept, and both coordinates never decrease."""
    s = sorted(v for v in values if math.isfinite(v))
    n = len(s)
    if n == 0:
        return []
    if n <= max_points:
        ranks: Iterable[int] = range(n)
    else:
        step = (n - 1) / (max(max_points, 2) - 1)
        ranks = sorted({round(k * step) for k in range(max(max_points, 2))})
    return [(s[i], (i + 1) / n) for i in ranks]


@dataclass(frozen=True)
class _Scale:
    lo: float
    hi: float
    ticks: tuple[float, ...]
    log: bool = False

    def frac(self, v: float) -> float:
        if self.log:
            v = max(v, self.lo)
            return (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (v - self.lo) / (self.hi - self.lo)

    def label(self, v: float) -> str:
        if self.log:
            return _plain(v)
        step = self.ticks[1] - self.ticks[0] if len(self.ticks) > 1 else 1.0
        digits = next(d for d in range(12) if all(abs(round(t, d) - t) < step * 1e-6 for t in self.ticks))
        return f"{v:,.{digits}f}"


def nice_ticks(lo: float, hi: float, target: int = 6) -> tuple[float, ...]:
    """Round tick values covering [lo, hi]: the finest step of 1, 2, 2.5 or 5 times a power of ten that gives
    at most `target` + 1 ticks."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for step in (m * mag for m in (1, 2, 2.5, 5, 10, 20)):
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        if last - first <= target:
            break
    digits = max(0, -math.floor(math.log10(step)) + 1)
    return tuple(round(k * step, digits) for k in range(first, last + 1))


def _linear(lo: float, hi: float) -> _Scale:
    ticks = nice_ticks(lo, hi)
    return _Scale(ticks[0], ticks[-1], ticks)


def _log(lo: float, hi: float) -> _Scale:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    b = max(b, a + 1)
    mults = (1, 2, 5) if b - a <= 3 else (1,)
    ticks = tuple(m * 10.0**k for k in range(a, b + 1) for m in mults if m * 10.0**k <= 10.0**b)
    return _Scale(10.0**a, 10.0**b, ticks, log=True)


def _plain(v: float) -> str:
    if v >= 1:
        return f"{v:,.0f}"
    return f"{v:.{max(0, -math.floor(math.log10(v) + 1e-9))}f}"


@dataclass(frozen=True)
class _Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str
    dash: str = ""
    marker: str = ""  # "", "circle" or "square"
    tips: Sequence[str] = ()
    run: int = 0


@dataclass(frozen=True)
class _Key:
    """A legend entry."""

    label: str
    color: str
    dash: str = ""
    marker: str = ""


_W, _H = 640, 340
_ML, _MR, _MT, _MB = 66, 20, 36, 46


def _svg(
    name: str,
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[_Series],
    x: _Scale,
    y: _Scale,
    legend: Sequence[_Key],
    y_tick: Callable[[float], str] | None = None,
) -> str:
    x0, x1, y0, y1 = _ML, _W - _MR, _MT, _H - _MB

    def px(v: float) -> float:
        return x0 + x.frac(v) * (x1 - x0)

    def py(v: float) -> float:
        return y1 - y.frac(v) * (y1 - y0)

    legend_rows, legend_svg = _legend(legend, x0, _H + 4, x1 - x0)
    height = _H + 4 + legend_rows * 18 + 6
    ident = f"plot-{name}"
    out = [
        f'<svg class="plot" data-plot="{esc(name)}" xmlns="http://www.w3.org/2000/svg" width="{_W}" '
        f'height="{height}" viewBox="0 0 {_W} {height}" role="img" aria-labelledby="{ident}-title">',
        f'<title id="{ident}-title">{esc(title)}</title>',
        f'<text class="title" x="{_W / 2}" y="20" text-anchor="middle">{esc(title)}</text>',
        f'<rect class="frame" x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}"/>',
    ]
    for t in x.ticks:
        p = px(t)
        out.append(
            f'<line class="grid" x1="{p:.1f}" y1="{y0}" x2="{p:.1f}" y2="{y1}"/>'
            f'<line class="tick" x1="{p:.1f}" y1="{y1}" x2="{p:.1f}" y2="{y1 + 5}"/>'
            f'<text class="tick" x="{p:.1f}" y="{y1 + 18}" text-anchor="middle">{esc(x.label(t))}</text>'
        )
    for t in y.ticks:
        p = py(t)
        text = y_tick(t) if y_tick is not None else y.label(t)
        out.append(
            f'<line class="grid" x1="{x0}" y1="{p:.1f}" x2="{x1}" y2="{p:.1f}"/>'
            f'<line class="tick" x1="{x0 - 5}" y1="{p:.1f}" x2="{x0}" y2="{p:.1f}"/>'
            f'<text class="tick" x="{x0 - 8}" y="{p + 4:.1f}" text-anchor="end">{esc(text)}</text>'
        )
    out.append(
        f'<text class="axis" x="{(x0 + x1) / 2}" y="{y1 + 38}" text-anchor="middle">{esc(x_label)}</text>'
    )
    out.append(
        f'<text class="axis" x="16" y="{(y0 + y1) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(y0 + y1) / 2})">{esc(y_label)}</text>'
    )
    if not any(s.points for s in series):
        middle = f'x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle"'
        out.append(f'<text class="nodata" {middle}>no data</text>')
    for s in series:
        if not s.points:
            continue
        coords = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in s.points)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(
            f'<g class="series" data-run="{s.run}"><title>{esc(s.label)}</title>'
            f'<polyline points="{coords}" stroke="{s.color}"{dash}/>'
        )
        for k, (a, b) in enumerate(s.points if s.marker else ()):
            tip = f"<title>{esc(s.tips[k])}</title>" if k < len(s.tips) else ""
            out.append(_marker(s.marker, px(a), py(b), s.color, tip))
        out.append("</g>")
    out += [legend_svg, "</svg>"]
    return "".join(out)


def _marker(kind: str, cx: float, cy: float, color: str, inner: str = "") -> str:
    if kind == "square":
        return f'<rect x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" fill="{color}">{inner}</rect>'
    return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{color}">{inner}</circle>'


def _legend(keys: Sequence[_Key], left: float, top: float, width: float) -> tuple[int, str]:
    if not keys:
        return 0, ""
    out = ['<g class="legend">']
    x, row = left, 0
    for k in keys:
        w = 30 + 7.4 * len(k.label) + 22
        if x > left and x + w > left + width:
            x, row = left, row + 1
        y = top + row * 18 + 9
        dash = f' stroke-dasharray="{k.dash}"' if k.dash else ""
        out.append(
            f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 24:.1f}" y2="{y:.1f}" stroke="{k.color}"{dash}/>'
        )
        if k.marker:
            out.append(_marker(k.marker, x + 12, y, k.color))
        out.append(f'<text x="{x + 30:.1f}" y="{y + 4:.1f}">{esc(k.label)}</text>')
        x += w
    out.append("</g>")
    return row + 1, "".join(out)


def _request_values(r: Mapping[str, Any]) -> dict[str, list[float]]:
    """Latencies (seconds) of the requests that summaries count as ok; warm-up and cool-down left out."""
    out: dict[str, list[float]] = {"ttft": [], "tpot": [], "e2e": [], "itl": []}
    requests = r.get("requests")
    if not isinstance(requests, list):
        return out
    for q in requests:
        if (
            not isinstance(q, Mapping)
            or q.get("excluded")
            or q.get("status") != 200
            or q.get("error") is not None
        ):
            continue
        for key in ("ttft", "tpot", "e2e"):
            if (v := number(q.get(key))) is not None:
                out[key].append(v)
        itl = q.get("itl")
        if isinstance(itl, list):
            out["itl"] += [v for v in itl if number(v) is not None]
    return out


def _cdf_plot(
    name: str,
    title: str,
    what: str,
    runs: Sequence[Run],
    values: Sequence[Sequence[float]],
    zeros_apart: bool = False,
) -> str:
    """`zeros_apart`: zero values (ITL gaps of chunks read together) are counted in the legend, not drawn:
    on a log axis they would pile up at its left edge as if they were the fastest tokens."""
    series: list[_Series] = []
    legend: list[_Key] = []
    for i, ((label, _), vs) in enumerate(zip(runs, values, strict=True)):
        text = f"{label} (n={len(vs):,})"
        if zeros_apart:
            zeros = sum(v <= 0 for v in vs)
            vs = [v for v in vs if v > 0]
            if zeros:
                text = f"{label} (n={len(vs) + zeros:,}; {zeros / (len(vs) + zeros):.0%} zero gaps not drawn)"
        pts = [(a * 1000, b) for a, b in cdf_points(vs)]
        if pts:
            pts.insert(0, (pts[0][0], 0.0))
        series.append(_Series(text, pts, color(i), dash(i), run=i))
        legend.append(_Key(text, color(i), dash(i)))
    xs = sorted(a for s in series for a, _ in s.points)
    if xs:
        lo_q = xs[len(xs) // 100]
        positive = [a for a in xs if a > 0]
        if positive and xs[-1] / max(lo_q, positive[0]) > 50:
            x = _log(max(lo_q, positive[0]), xs[-1])
        else:
            x = _linear(0.0, xs[-1])
    else:
        x = _linear(0.0, 1.0)
    y = _Scale(0.0, 1.0, (0.0, 0.25, 0.5, 0.75, 1.0))
    x_label = f"{what} (ms{', log scale' if x.log else ''})"
    return _svg(
        name, title, x_label, "share at or below", series, x, y, legend, y_tick=lambda t: f"{t * 100:.0f} %"
    )


def _load_axis_label(runs: Sequence[Run]) -> str:
    modes = {
        str(level.get("mode"))
        for _, r in runs
        for level in levels_of(r)
        if number(level.get("value")) is not None
    }
    if modes <= {"rate", "poisson"}:
        return "offered load (req/s)"
    if modes == {"concurrency"}:
        return "offered load (concurrent clients)"
    return "offered load (req/s or concurrent clients)"


def _vs_load(runs: Sequence[Run], path: tuple[str, ...]) -> list[list[tuple[float, float, str]]]:
    """Per run: (offered load, value at `path` in the level summary, level label) for levels with both."""
    out: list[list[tuple[float, float, str]]] = []
    for _, r in runs:
        pts = []
        for level in levels_of(r):
            xv, yv = number(level.get("value")), number(lookup(level.get("summary"), path))
            if xv is not None and yv is not None:
                pts.append((float(xv), float(yv), str(level.get("label", ""))))
        out.append(sorted(pts))
    return out


def _throughput_plot(runs: Sequence[Run]) -> str:
    data = _vs_load(runs, ("output_tok_s",))
    series, legend = [], []
    for i, ((label, _), pts) in enumerate(zip(runs, data, strict=True)):
        tips = [f"{label} {lab}: {fmt(b, 'tok/s')}" for _, b, lab in pts]
        series.append(_Series(label, [(a, b) for a, b, _ in pts], color(i), dash(i), "circle", tips, i))
        legend.append(_Key(label, color(i), dash(i), "circle"))
    x = _linear(0.0, max((a for pts in data for a, _, _ in pts), default=1.0))
    y = _linear(0.0, max((b for pts in data for _, b, _ in pts), default=1.0))
    title = "Output throughput vs offered load"
    return _svg("throughput-vs-load", title, _load_axis_label(runs), "output tok/s", series, x, y, legend)


def _ttft_load_plot(runs: Sequence[Run]) -> str:
    p50, p99 = _vs_load(runs, ("ttft", "p50")), _vs_load(runs, ("ttft", "p99"))
    series, legend = [], []
    for i, (label, _) in enumerate(runs):
        for q, pts, pattern, marker in (("p50", p50[i], "", "circle"), ("p99", p99[i], "6 3", "square")):
            tips = [f"{label} {lab}: TTFT {q} {fmt(b, 'ms')}" for _, b, lab in pts]
            ms = [(a, b * 1000) for a, b, _ in pts]
            series.append(_Series(f"{label} {q}", ms, color(i), pattern, marker, tips, i))
        legend.append(_Key(label, color(i)))
    legend += [_Key("p50", "#555555", "", "circle"), _Key("p99", "#555555", "6 3", "square")]
    x = _linear(0.0, max((a for pts in p50 + p99 for a, _, _ in pts), default=1.0))
    y = _linear(0.0, max((b * 1000 for pts in p50 + p99 for _, b, _ in pts), default=1.0))
    title = "TTFT p50 and p99 vs offered load"
    return _svg("ttft-vs-load", title, _load_axis_label(runs), "TTFT (ms)", series, x, y, legend)


def plots(runs: Sequence[Run]) -> list[str]:
    values = [_request_values(r) for _, r in runs]
    out = [
        _cdf_plot("ttft-cdf", "Time to first token: CDF", "TTFT", runs, [v["ttft"] for v in values]),
        _cdf_plot("tpot-cdf", "Time per output token: CDF", "TPOT", runs, [v["tpot"] for v in values]),
        _cdf_plot(
            "itl-cdf", "Inter-token latency: CDF (gaps > 0)", "ITL", runs, [v["itl"] for v in values], True
        ),
        _cdf_plot("e2e-cdf", "End-to-end latency: CDF", "e2e latency", runs, [v["e2e"] for v in values]),
    ]
    if any(sum(number(level.get("value")) is not None for level in levels_of(r)) >= 2 for _, r in runs):
        out += [_throughput_plot(runs), _ttft_load_plot(runs)]
    return [f"<figure>{svg}</figure>" for svg in out]
