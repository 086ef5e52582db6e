"""What a pool of started workers runs and how it scales: plain values, mapped from the fleet file.

No defaults here: the config package is the only place defaults live, and it fills every field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["PoolSpec", "RuleKind", "ScalingRule", "WorkerSpec"]


class RuleKind(StrEnum):
    QUEUE_DELAY = "queue_delay"  # add a worker when a request has waited more than `target` seconds
    REQUEST_COUNT = "request_count"  # ceil((queued + running) / target) workers
    CONCURRENCY = "concurrency"  # `target` streams per worker, also the most one worker is sent


@dataclass(frozen=True)
class ScalingRule:
    kind: RuleKind
    target: float

    def __post_init__(self) -> None:
        if self.target <= 0:
            raise ValueError(f"{self.kind} target must be positive, got {self.target}")


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: which engine runs which model under which name, on how many GPUs."""

    engine: str  # a name in fleetgate.engines.registry.ENGINES
    model: str  # hub id or path (a simulator profile for `sim`)
    served_model_name: str
    engine_args: Sequence[str]  # passed through to the engine's command line
    gpus_per_worker: int
    sleep: bool  # scale down by sleeping (vLLM sleep mode) instead of stopping
    sleep_level: int  # 1 offloads weights to CPU memory; 2 discards them
    env: Mapping[str, str]  # extra variables for the worker
    hf_token_env: str | None  # variable of the provider's environment holding the hub token
    hf_token_file: str | None  # or a file holding it; the file wins when both are set
    offline: bool  # HF_HUB_OFFLINE: weights must already be cached

    def __post_init__(self) -> None:
        if self.gpus_per_worker < 0:
            raise ValueError("gpus_per_worker must not be negative")
        if self.sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {self.sleep_level}")


@dataclass(frozen=True)
class PoolSpec:
    """A pool whose workers fleetgate starts: bounds, rule, pacing, restarts and shutdown."""

    name: str
    worker: WorkerSpec
    min_workers: int
    max_workers: int
    idle_timeout: float  # seconds without queued or running requests before the last worker goes
    rule: ScalingRule
    stabilization_window: float  # scale down only to the highest count wanted over this many seconds
    scale_up_limit: int  # workers added (started or woken) at most per scale_up_period
    scale_up_period: float
    backoff_base: float  # first restart delay after a crash; doubles per consecutive failure
    backoff_cap: float  # longest delay; a worker ready this long has recovered
    max_failures: int  # consecutive failures of one worker that mark the pool failed
    startup_timeout: float  # a worker not ready by then has failed (a stuck download, a hung compile)
    max_hold: float  # how long a request waits for a worker to start when none is ready
    drain_deadline: float  # longest wait for in-flight streams before a stop or sleep goes ahead
    stop_grace: float  # SIGTERM to SIGKILL
    interval: float  # seconds between autoscaler ticks
    gpus: tuple[str, ...] | None  # the GPUs the pool may use (None: what the machine has)
    log_dir: str  # worker logs

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers or self.max_workers < 1:
            raise ValueError(
                f"pool {self.name}: need 0 <= min_workers <= max_workers and max_workers >= 1, "
                f"got {self.min_workers}..{self.max_workers}"
            )
        if self.scale_up_limit < 1 or self.max_failures < 1:
            raise ValueError(f"pool {self.name}: scale_up_limit and max_failures must be at least 1")
        if self.backoff_base <= 0 or self.backoff_cap < self.backoff_base:
            raise ValueError(f"pool {self.name}: need 0 < backoff_base <= backoff_cap")

    def backoff(self, failures: int) -> float:
        """Delay before the restart that follows `failures` consecutive failures (1, 2, ...)."""
        return min(self.backoff_cap, self.backoff_base * 2.0 ** min(max(failures - 1, 0), 60))
