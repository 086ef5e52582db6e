"""Offered load: `--load concurrency=N | rate=R | poisson=R | sweep=rate:5,10,20 | sweep=concurrency:1,8`,
and the send schedules it implies."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Mode = Literal["concurrency", "rate", "poisson", "trace"]


@dataclass(frozen=True)
class Level:
    """One load level: a fixed concurrency, a constant or Poisson rate, or a trace's own timestamps."""

    mode: Mode
    value: float  # concurrency (clients) or rate (requests/s); 0 for trace

    @property
    def label(self) -> str:
        if self.mode == "trace":
            return "trace"
        value = int(self.value) if self.value == int(self.value) else self.value
        return f"{self.mode}={value}"


def parse_load(text: str) -> list[Level]:
    """The levels of `--load`, in the order they run."""
    kind, sep, rest = text.strip().partition("=")
    if not sep or not rest:
        raise ValueError(
            f"--load: expected MODE=VALUE (concurrency=8, rate=10, poisson=10, sweep=rate:5,10), got {text!r}"
        )
    if kind == "sweep":
        mode, sep, values = rest.partition(":")
        if not sep or mode not in ("concurrency", "rate", "poisson"):
            raise ValueError(
                f"--load sweep: expected sweep=rate:5,10,20 or sweep=concurrency:1,8,32, got {text!r}"
            )
        return [_level(mode, v) for v in values.split(",") if v.strip()]
    if kind not in ("concurrency", "rate", "poisson"):
        raise ValueError(f"--load: unknown mode {kind!r}; use concurrency, rate, poisson or sweep")
    return [_level(kind, rest)]


def _level(mode: str, raw: str) -> Level:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"--load: {mode} needs a number, got {raw!r}") from None
    if value <= 0 or (mode == "concurrency" and value != int(value)):
        raise ValueError(
            f"--load: {mode} must be a positive {'integer' if mode == 'concurrency' else 'number'}"
        )
    return Level(mode, value)  # type: ignore[arg-type]


def arrivals(level: Level, seed: int, duration: float | None, count: int | None) -> list[float]:
    """Send times (seconds from the level start) of an open-loop level, until `duration` or `count`."""
    if level.mode not in ("rate", "poisson"):
        raise ValueError("arrivals() is for rate and poisson levels")
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    while (count is None or len(out) < count) and (duration is None or t < duration):
        out.append(t)
        # Constant rate: i / rate exactly, so no rounding drift accumulates over a long run.
        t = t + rng.expovariate(level.value) if level.mode == "poisson" else len(out) / level.value
    return out


def share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split as evenly as possible over `parts`."""
    return total // parts + (1 if index < total % parts else 0)
