"""The engine's /metrics: vLLM's families through the simulator's exposition code, plus batch sizes.

The gateway routes on `vllm:num_requests_running|waiting`, `vllm:kv_cache_usage_perc` (here the share of KV
blocks in use) and the prefix-cache counters, so the embedded engine writes exactly what vLLM writes. One
family of our own, `fleetgate_engine_step_sequences`, counts sequences per engine step: the direct evidence
of batching.
"""

from __future__ import annotations

import threading

from fleetgate.worker.exposition import Histogram, go_float
from fleetgate.worker.metrics import EngineStats, EngineView

_STEP_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
STEP_SEQUENCES = "fleetgate_engine_step_sequences"


class Stats:
    """vLLM's counters and ours; the engine thread updates them and scrapes read them under one lock."""

    def __init__(self, model_name: str, cache_info: dict[str, str]) -> None:
        self.engine = EngineStats(model_name, cache_info, max_loras=None, tool_parser=True)
        self.lock = threading.RLock()
        self.step_sequences = Histogram(_STEP_BUCKETS)

    def on_step(self, sequences: int) -> None:
        self.step_sequences.observe(sequences)

    def render(self, engine: EngineView) -> str:
        with self.lock:
            text = self.engine.render(engine)
            h = self.step_sequences
            lab = self.engine.labels
            lines = [
                f"# HELP {STEP_SEQUENCES} Sequences in each engine step (decodes and prefill chunks).",
                f"# TYPE {STEP_SEQUENCES} histogram",
            ]
            total = 0
            for le, count in zip((*h.buckets, float("inf")), h.counts, strict=True):
                total += count
                lines.append(f'{STEP_SEQUENCES}_bucket{{{lab},le="{go_float(le)}"}} {go_float(total)}')
            lines.append(f"{STEP_SEQUENCES}_count{{{lab}}} {go_float(h.n)}")
            lines.append(f"{STEP_SEQUENCES}_sum{{{lab}}} {go_float(h.total)}")
        return text + "\n".join(lines) + "\n"
