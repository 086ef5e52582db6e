"""Length distributions: `length_dist` turns a spec such as `uniform:LO:HI` into a sampler of token counts."""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate

MAX_LENGTH = 10_000_000  # no length spec yields more tokens than this


# ---- length distributions ---------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_FORMS = (
    "N (fixed), uniform:LO:HI, normal:MEAN:SD[:MAX], lognormal:MEDIAN:SIGMA[:MAX], zipf:S:MAX "
    f"(token counts are >= 1 and <= {MAX_LENGTH})"
)


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"bad length spec {spec!r}: {why}; expected {_FORMS}")


def _int_arg(spec: str, name: str, raw: str) -> int:
    if not _INT.fullmatch(raw):
        raise _bad(spec, f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    if not 1 <= value <= MAX_LENGTH:
        raise _bad(spec, f"{name} must be between 1 and {MAX_LENGTH}, got {value}")
    return value


def _float_arg(spec: str, name: str, raw: str, *, positive: bool) -> float:
    if not _FLOAT.fullmatch(raw):
        raise _bad(spec, f"{name} must be a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value) or value < 0 or (positive and value == 0) or value > MAX_LENGTH:
        bound = "> 0" if positive else ">= 0"
        raise _bad(spec, f"{name} must be {bound} and <= {MAX_LENGTH}, got {raw}")
    return value


def length_dist(spec: str) -> Callable[[random.Random], int]:
    """A sampler of token counts from a spec; every draw is an int in [1, MAX_LENGTH] (or the spec's MAX).

    `512` fixed; `uniform:LO:HI` integers LO..HI inclusive; `normal:MEAN:SD[:MAX]` rounded and clamped to [1,
    MAX]; `lognormal:MEDIAN:SIGMA[:MAX]` MEDIAN * exp(SIGMA * N(0, 1)), rounded and clamped likewise;
    `zipf:S:MAX` k in 1..MAX with probability proportional to k^-S. Raises ValueError naming the spec.
    """
    if not isinstance(spec, str):
        raise ValueError(f"bad length spec {spec!r}: expected a string of the form {_FORMS}")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    args = [a.strip() for a in rest.split(":")] if rest else []
    if not rest and _INT.fullmatch(kind):
        value = _int_arg(spec, "the length", kind)
        return lambda rng: value
    if kind == "uniform":
        if len(args) != 2:
            raise _bad(spec, "uniform takes LO:HI")
        lo, hi = _int_arg(spec, "LO", args[0]), _int_arg(spec, "HI", args[1])
        if lo > hi:
            raise _bad(spec, f"LO ({lo}) is above HI ({hi})")
        return lambda rng: rng.randint(lo, hi)
    if kind in ("normal", "lognormal"):
        if len(args) not in (2, 3):
            first = "MEAN" if kind == "normal" else "MEDIAN"
            raise _bad(spec, f"{kind} takes {first}:{'SD' if kind == 'normal' else 'SIGMA'}[:MAX]")
        center = _float_arg(spec, "MEAN" if kind == "normal" else "MEDIAN", args[0], positive=True)
        spread = _float_arg(spec, "SD" if kind == "normal" else "SIGMA", args[1], positive=False)
        cap = _int_arg(spec, "MAX", args[2]) if len(args) == 3 else MAX_LENGTH
        if kind == "normal":

            def normal(rng: random.Random) -> int:
                return min(max(round(rng.gauss(center, spread)), 1), cap)

            return normal
        log_center, log_cap = math.log(center), math.log(cap)

        def lognormal(rng: random.Random) -> int:
            exponent = log_center + spread * rng.gauss(0.0, 1.0)
            return cap if exponent >= log_cap else max(round(math.exp(exponent)), 1)

        return lognormal
    if kind == "zipf":
        if len(args) != 2:
            raise _bad(spec, "zipf takes S:MAX")
        s = _float_arg(spec, "S", args[0], positive=True)
        top = _int_arg(spec, "MAX", args[1])
        if top > 1_000_000:
            raise _bad(spec, f"zipf MAX must be <= 1000000, got {top}")
        cum = list(accumulate(k**-s for k in range(1, top + 1)))
        total = cum[-1]

        def zipf(rng: random.Random) -> int:
            return min(bisect_right(cum, rng.random() * total) + 1, top)

        return zipf
    raise _bad(spec, f"unknown kind {kind!r}" if rest or kind else "empty")
