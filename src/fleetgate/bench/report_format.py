"""What every part of the bench report shares: escaping, numbers as the page shows them, run colours."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

# Okabe & Ito's colour-blind-safe palette; yellow last as it is faint on white. Past 8 runs, dashes vary too.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
_DASHES = ("", "6 3", "2 3", "8 3 2 3")

Run = tuple[str, Mapping[str, Any]]
Unit = Literal["int", "pct", "ms", "req/s", "tok/s"]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def number(value: object) -> float | int | None:
    """A finite number, or None for null, NaN, missing or non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def as_map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def lookup(data: Mapping[str, Any] | None, path: Sequence[str]) -> object:
    node: object = data
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def fmt(value: float, unit: Unit) -> str:
    if unit == "int":
        return f"{value:,.0f}"
    if unit == "pct":
        return f"{value * 100:.2f} %"
    if unit == "ms":
        ms = value * 1000
        digits = 0 if abs(ms) >= 100 else 1 if abs(ms) >= 10 else 2 if abs(ms) >= 1 else 3
        return f"{ms:,.{digits}f} ms"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f} {unit}"


def fmt_seconds(value: object) -> str:
    v = number(value)
    return "—" if v is None else f"{v:g} s"


def cell(key: str, value: object, unit: Unit) -> str:
    v = number(value)
    if v is None:
        return f'<td class="num na" data-key="{esc(key)}" title="no data">—</td>'
    return f'<td class="num" data-key="{esc(key)}" data-value="{v!r}">{esc(fmt(v, unit))}</td>'


def swatch(i: int) -> str:
    return f'<span class="swatch" style="background:{color(i)}"></span>'


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def dash(i: int) -> str:
    return _DASHES[(i // len(PALETTE)) % len(_DASHES)]


def levels_of(r: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    levels = r.get("levels")
    return [x for x in levels if isinstance(x, Mapping)] if isinstance(levels, list) else []
