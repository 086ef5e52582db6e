"""The registry of workload kinds and `make_workload`, which builds the workload of a settings' kind."""

from __future__ import annotations

from fleetgate.bench.sizing import Sizer
from fleetgate.bench.workloads.base import Workload, _Base
from fleetgate.bench.workloads.multi_turn import MultiTurnWorkload
from fleetgate.bench.workloads.settings import WorkloadSettings, _inconsistency
from fleetgate.bench.workloads.shared_prefix import SharedPrefixWorkload
from fleetgate.bench.workloads.single import RandomWorkload, ShareGPTLikeWorkload
from fleetgate.bench.workloads.tools import ToolsWorkload
from fleetgate.bench.workloads.trace import TraceWorkload

# ---- the registry -----------------------------------------------------------------------------------------

WORKLOADS: dict[str, type[_Base]] = {
    "random": RandomWorkload,
    "shared-prefix": SharedPrefixWorkload,
    "multi-turn": MultiTurnWorkload,
    "sharegpt-like": ShareGPTLikeWorkload,
    "tools": ToolsWorkload,
    "trace": TraceWorkload,
}


def make_workload(
    settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int = 0, workers: int = 1
) -> Workload:
    """The workload of `settings.kind` for one worker.

    `seed` is the run's seed, the same in every worker: shared-prefix contents depend on it alone. `worker`
    (any int >= 0, e.g. `level * processes + w` for a stream per level and worker) picks the streams of
    everything drawn per request. `workers` > 1 shards a trace: this worker replays lines i with
    i % workers == worker % workers; with the default 1 every worker gets the whole trace.
    """
    if worker < 0 or workers < 1:
        raise ValueError(f"worker must be >= 0 and workers >= 1, got worker={worker} workers={workers}")
    problem = _inconsistency(settings)
    if problem:
        raise ValueError(problem)
    if settings.kind == "trace":
        return TraceWorkload(settings, sizer, seed, worker, workers)
    return WORKLOADS[settings.kind](settings, sizer, seed, worker)
