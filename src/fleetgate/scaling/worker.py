"""A started worker as providers report it: its state, its cold start by phase, its restarts and wakes."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from fleetgate.engines.base import LogEvent, Phase
from fleetgate.scaling.spec import PoolSpec

__all__ = ["Segment", "StartupTimeline", "Worker", "WorkerState"]

# Log lines kept in memory per worker: enough to say why it died.
TAIL_LINES = 40


class WorkerState(StrEnum):
    STARTING = "starting"  # spawned, restarting after a crash, or waking: not routable yet
    READY = "ready"  # routable
    SLEEPING = "sleeping"  # alive, weights offloaded, not routable
    DRAINING = "draining"  # no new requests; in-flight ones finish before a stop or sleep
    STOPPED = "stopped"
    FAILED = "failed"  # gave up after repeated failures; the reason is in last_error


@dataclass
class Segment:
    phase: Phase
    start: float
    end: float | None = None


class StartupTimeline:
    """The phases of one cold start with their times, fed from the engine's log as lines arrive."""

    def __init__(self, started_at: float) -> None:
        self.segments = [Segment(Phase.INIT, started_at)]
        self.progress: float | None = None
        self.ready_at: float | None = None

    @property
    def phase(self) -> Phase:
        return self.segments[-1].phase

    def feed(self, events: list[LogEvent], now: float) -> None:
        for e in events:
            if e.phase is self.phase and not e.ago:
                if e.progress is not None:
                    self.progress = e.progress
                continue
            current = self.segments[-1]
            # A phase reported after the fact (a finished download) cannot begin before the one it cut short.
            begin = max(now - e.ago, current.start)
            current.end = begin
            self.segments.append(Segment(e.phase, begin))
            self.progress = e.progress

    def finish(self, now: float) -> None:
        """The worker answers requests: the last phase ends here."""
        if self.phase is not Phase.READY:
            self.segments[-1].end = now
            self.segments.append(Segment(Phase.READY, now))
        self.segments[-1].end = now
        self.ready_at = now

    def durations(self, now: float | None = None) -> dict[Phase, float]:
        """Seconds spent in each phase (a phase may recur: loading resumes after a download); the phase
        under way counts up to `now` when given."""
        out: dict[Phase, float] = {}
        for s in self.segments:
            end = s.end if s.end is not None else now
            if s.phase is not Phase.READY and end is not None:
                out[s.phase] = out.get(s.phase, 0.0) + end - s.start
        return out

    @property
    def total(self) -> float | None:
        """Spawn to ready, once ready."""
        return None if self.ready_at is None else self.ready_at - self.segments[0].start


@dataclass(eq=False)
class Worker:
    """One worker process (and the restarts of it): written by its provider, read by everyone else."""

    id: str
    spec: PoolSpec
    log_path: Path
    gpus: tuple[str, ...]
    state: WorkerState = WorkerState.STARTING
    port: int = 0
    host: str = "127.0.0.1"  # a pod's IP for Kubernetes workers
    pid: int | None = None
    timeline: StartupTimeline | None = None
    failures: int = 0  # consecutive: reset once a start has held for backoff_cap seconds
    restarts: int = 0
    restart_at: float | None = None  # monotonic time of the next restart, while backing off after a crash
    wakes: int = 0
    last_wake_seconds: float | None = None
    last_error: str | None = None
    diagnosis: str | None = None  # why this start cannot succeed, read off its log; restarts would not help
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))

    @property
    def pool(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def snapshot(self, now: float) -> dict[str, object]:
        """For /admin/fleet and `fleetgate status`; `now` is monotonic time."""
        t = self.timeline
        return {
            "id": self.id,
            "pool": self.pool,
            "state": self.state.value,
            "url": self.url,
            "pid": self.pid,
            "gpus": list(self.gpus),
            "phase": None if t is None else t.phase.value,
            "progress": None if t is None else t.progress,
            "phases_s": {} if t is None else {p.value: round(d, 3) for p, d in t.durations(now).items()},
            "cold_start_s": None if t is None or t.total is None else round(t.total, 3),
            # Seconds since this start began, while it is under way.
            "starting_s": None
            if t is None or t.ready_at is not None
            else round(now - t.segments[0].start, 1),
            "restart_in_s": None if self.restart_at is None else round(max(self.restart_at - now, 0.0), 3),
            "restarts": self.restarts,
            "failures": self.failures,
            "wakes": self.wakes,
            "last_wake_s": self.last_wake_seconds,
            "last_error": self.last_error,
            "log": str(self.log_path),
        }
