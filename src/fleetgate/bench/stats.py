"""Aggregates of request records: latency quantiles, throughput, goodput under SLOs, errors."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetgate.bench.records import RequestRecord

QUANTILES = (0.5, 0.9, 0.95, 0.99)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on already sorted data."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def distribution(values: Iterable[float]) -> dict[str, float | int]:
    s = sorted(values)
    if not s:
        return {"count": 0}
    out: dict[str, float | int] = {"count": len(s), "mean": sum(s) / len(s), "min": s[0], "max": s[-1]}
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = quantile(s, q)
    return out


@dataclass(frozen=True)
class SLO:
    """Per-request targets (seconds); a request meets the SLO when it succeeded and meets every target."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None
    attainment: float = 0.99  # share of requests that must meet it for the run to pass

    @classmethod
    def parse(cls, text: str) -> SLO:
        """`ttft=1s,tpot=50ms,e2e=10s,attainment=0.95`."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep or key not in ("ttft", "tpot", "e2e", "attainment"):
                raise ValueError(f"--slo: expected ttft=, tpot=, e2e= or attainment=, got {part!r}")
            values[key] = float(raw) if key == "attainment" else parse_seconds(raw)
        if "attainment" in values and not 0 < values["attainment"] <= 1:
            raise ValueError("--slo: attainment must be in (0, 1]")
        return cls(**values)

    @property
    def empty(self) -> bool:
        return self.ttft is None and self.tpot is None and self.e2e is None

    def met_by(self, r: RequestRecord) -> bool:
        if not r.ok:
            return False
        if self.ttft is not None and (r.ttft is None or r.ttft > self.ttft):
            return False
        tpot = r.tpot
        if self.tpot is not None and tpot is not None and tpot > self.tpot:
            return False
        return not (self.e2e is not None and (r.e2e is None or r.e2e > self.e2e))

    def to_json(self) -> dict[str, float | None]:
        return {"ttft": self.ttft, "tpot": self.tpot, "e2e": self.e2e, "attainment": self.attainment}


def parse_seconds(raw: str) -> float:
    """`1s`, `250ms`, `50us`, `2m` or a bare number of seconds."""
    raw = raw.strip().lower()
    for suffix, scale in (("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("s", 1.0), ("m", 60.0)):
        if raw.endswith(suffix):
            return float(raw[: -len(suffix)]) * scale
    return float(raw)


def summarize(records: Sequence[RequestRecord], duration: float, slo: SLO) -> dict[str, Any]:
    """The numbers a report shows for one set of requests measured over `duration` seconds."""
    kept = [r for r in records if not r.excluded]
    ok = [r for r in kept if r.ok]
    errors = [r for r in kept if not r.ok]
    out_tokens = sum(r.completion_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    duration = max(duration, 1e-9)
    itl: list[float] = []
    for r in ok:
        itl += r.itl
    met = sum(1 for r in kept if slo.met_by(r)) if not slo.empty else len(ok)
    return {
        "requests": len(kept),
        "ok": len(ok),
        "errors": len(errors),
        "success_rate": len(ok) / len(kept) if kept else math.nan,
        "errors_by_status": dict(Counter(str(r.status) for r in errors)),
        "errors_by_type": dict(Counter(r.error or f"http_{r.status}" for r in errors)),
        "duration_s": duration,
        "request_rate": len(ok) / duration,
        "output_tok_s": out_tokens / duration,
        "total_tok_s": (out_tokens + in_tokens) / duration,
        "prompt_tokens": in_tokens,
        "completion_tokens": out_tokens,
        "ttft": distribution(r.ttft for r in ok if r.ttft is not None),
        "tpot": distribution(t for r in ok if (t := r.tpot) is not None),
        "itl": distribution(itl),
        "e2e": distribution(r.e2e for r in ok if r.e2e is not None),
        "lag": distribution(r.lag for r in kept),
        "goodput_rate": met / duration,
        "slo_attainment": met / len(kept) if kept else math.nan,
    }


def by_key(
    records: Sequence[RequestRecord], key: str, duration: float, slo: SLO
) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[RequestRecord]] = {}
    for r in records:
        value = getattr(r, key)
        if value is not None:
            groups.setdefault(str(value), []).append(r)
    return {k: summarize(v, duration, slo) for k, v in sorted(groups.items())}


# A request sent later than this after its scheduled time counts as late.
LAG_LIMIT = 0.010
# A level is behind schedule when more than this share of its requests (and at least LATE_MIN) were late.
LATE_SHARE = 0.05
LATE_MIN = 3


def late_levels(requests: Iterable[Mapping[str, Any]], processes: int = 1) -> dict[int, float]:
    """Levels whose schedule the load generator could not keep, with the lag p99 of their counted requests.

    The first send of each generator process in a level pays for opening connections, and on a short level
    at a low rate those few dominate a p99: they are left out, and a level is behind only when late sends
    are a pattern (more than LATE_SHARE of the rest, at least LATE_MIN), as when the generator saturates.
    """
    by_level: dict[int, list[tuple[float, float]]] = {}
    for q in requests:
        if q.get("excluded"):
            continue
        scheduled, sent, level = q.get("scheduled"), q.get("sent"), q.get("level", 0)
        if isinstance(scheduled, int | float) and isinstance(sent, int | float) and isinstance(level, int):
            by_level.setdefault(level, []).append((float(scheduled), float(sent)))
    out: dict[int, float] = {}
    for level, sends in sorted(by_level.items()):
        counted = sorted(sends)[max(processes, 1) :]
        lags = sorted(sent - scheduled for scheduled, sent in counted)
        late = sum(lag > LAG_LIMIT for lag in lags)
        if late >= LATE_MIN and late > LATE_SHARE * len(lags):
            out[level] = quantile(lags, 0.99)
    return out
