"""What the autoscaler needs of a provider: start, stop, list, and sleep and wake for engines that can."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fleetgate.scaling.spec import PoolSpec
from fleetgate.scaling.worker import Worker


class Provider(Protocol):
    async def start(self, spec: PoolSpec) -> Worker:
        """A new worker of the pool, STARTING when this returns."""
        ...

    async def stop(self, worker_id: str, in_flight: Callable[[], int] | None = None) -> None:
        """Drain while `in_flight()` > 0 (up to the pool's deadline), then stop the worker."""
        ...

    def list(self, pool: str | None = None) -> list[Worker]: ...

    async def sleep(self, worker_id: str, in_flight: Callable[[], int] | None = None) -> None: ...

    async def wake(self, worker_id: str) -> float | None:
        """Seconds the wake took; None when it failed."""
        ...

    def failure(self, pool: str) -> str | None:
        """Why the pool failed (it starts nothing more), or None."""
        ...
