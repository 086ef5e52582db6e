"""The trace workload: replays a JSONL trace of timestamps and token counts."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from fleetgate.bench.records import RequestSpec
from fleetgate.bench.sizing import Sizer
from fleetgate.bench.workloads.base import Prompt, _Base
from fleetgate.bench.workloads.lengths import MAX_LENGTH
from fleetgate.bench.workloads.settings import WorkloadSettings

# ---- trace ------------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class TraceLine:
    timestamp: float
    input_tokens: int
    output_tokens: int
    prompt: str | None = None
    tenant: str | None = None


def read_trace(path: str | os.PathLike[str]) -> list[TraceLine]:
    """Lines of a JSONL trace, in file order; blank lines are skipped; errors name the file and line."""
    lines: list[TraceLine] = []
    try:
        raw_lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
    for number, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON: {exc}") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object")
        unknown = set(item) - {"timestamp", "input_tokens", "output_tokens", "prompt", "tenant"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        ts = item.get("timestamp")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts < 0:
            raise ValueError(f"{where}: timestamp must be a number of seconds >= 0, got {ts!r}")
        counts: list[int] = []
        for key in ("input_tokens", "output_tokens"):
            value = item.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LENGTH:
                raise ValueError(f"{where}: {key} must be an integer >= 1, got {value!r}")
            counts.append(value)
        prompt, tenant = item.get("prompt"), item.get("tenant")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"{where}: prompt must be a string")
        if tenant is not None and not isinstance(tenant, str):
            raise ValueError(f"{where}: tenant must be a string")
        lines.append(TraceLine(float(ts), counts[0], counts[1], prompt, tenant))
    return lines


class TraceWorkload(_Base):
    """Replays a JSONL trace: a request per line, in file order, with `RequestSpec.at` = the line's timestamp.

    Lines: `{"timestamp": s, "input_tokens": n, "output_tokens": m, "prompt"?: str, "tenant"?: str}`. Without
    a prompt, text (or ids) of `input_tokens` is generated; a prompt is sent as is (planned size stays the
    line's `input_tokens`). A line's tenant wins over the weighted draw (priority from `tenants` when named
    there). With `workers` > 1 each worker replays its share (line i to worker i % workers). Never wraps:
    `len()` is the number of requests this worker will plan, and `next_request` raises IndexError once they
    are all planned.
    """

    name = "trace"

    def __init__(
        self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int, workers: int = 1
    ) -> None:
        super().__init__(settings, sizer, seed, worker)
        if not settings.trace_file:
            raise ValueError("the trace workload needs a trace_file")
        self.lines = read_trace(settings.trace_file)[worker % workers :: workers]
        self._next = 0

    def __len__(self) -> int:
        return len(self.lines)

    def next_request(self) -> RequestSpec:
        if self._next >= len(self.lines):
            raise IndexError(f"trace exhausted after {len(self.lines)} requests")
        line = self.lines[self._next]
        self._next += 1
        prompt: Prompt = line.prompt if line.prompt is not None else self.prompt(line.input_tokens, self.rng)
        spec = self.single(prompt, line.input_tokens, line.output_tokens)
        spec.at = line.timestamp
        if line.tenant is not None:
            spec.tenant, spec.priority = self.tenants.named(line.tenant)
        return spec
