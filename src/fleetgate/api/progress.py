"""Startup phases of started workers as progress bars, for a terminal (`fleetgate up`, `fleetgate serve`).

The bars show only while some worker is starting; between cold starts the terminal belongs to the log.
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from fleetgate.engines.base import Phase
from fleetgate.scaling.pools import WorkerFleet
from fleetgate.scaling.worker import WorkerState

__all__ = ["show_startups"]

REFRESH = 0.25
_ORDER = list(Phase)


def _done(phase: Phase, progress: float | None) -> float:
    """Share of a cold start behind a worker in `phase` (its bar's progress counts within the phase)."""
    return (_ORDER.index(phase) + (progress or 0.0)) / (len(_ORDER) - 1)


async def show_startups(fleet: WorkerFleet, console: Console) -> None:
    """Until cancelled: one bar per starting worker, labelled with its phase."""
    bars: Progress | None = None
    tasks: dict[str, TaskID] = {}
    try:
        while True:
            starting = [w for w in fleet.workers() if w.state is WorkerState.STARTING and w.timeline]
            if starting and bars is None:
                bars = Progress(
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.fields[phase]}"),
                    TimeElapsedColumn(),
                    console=console,
                    transient=True,
                )
                bars.start()
            if not starting and bars is not None:
                bars.stop()
                bars, tasks = None, {}
            for w in starting:
                assert bars is not None and w.timeline is not None
                t = w.timeline
                label = "waking" if t.ready_at is not None else t.phase.value
                if t.progress is not None and t.ready_at is None:
                    label += f" {t.progress:.0%}"
                if w.restart_at is not None:
                    label = f"restart in {max(w.restart_at - time.monotonic(), 0):.0f} s"
                if w.id not in tasks:
                    what = f"{w.id} ({w.spec.worker.engine} {w.spec.worker.model})"
                    tasks[w.id] = bars.add_task(what, total=1.0, phase="")
                bars.update(tasks[w.id], completed=_done(t.phase, t.progress), phase=label)
            await asyncio.sleep(REFRESH)
    finally:
        if bars is not None:
            bars.stop()
