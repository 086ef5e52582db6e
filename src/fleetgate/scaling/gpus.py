"""Which GPUs a machine has and which worker holds which: no two workers ever share one."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence

__all__ = ["GpuInventory", "NotEnoughGpus", "discover_gpus", "nvml_gpus"]

log = logging.getLogger("fleetgate.scaling")


class NotEnoughGpus(RuntimeError):
    pass


def nvml_gpus() -> list[str]:
    """Indices of the GPUs NVML sees (PCI bus order); none when NVML or its Python binding is missing.

    Blocks on the driver: call it off the event loop.
    """
    try:
        # nvidia-ml-py is optional: the gateway installs without GPU libraries.
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return []
    try:
        nvml.nvmlInit()
    except Exception as e:  # the binding raises its own NVMLError family, driver or library missing
        log.info("NVML unavailable (%s): no GPUs found", e)
        return []
    try:
        return [str(i) for i in range(int(nvml.nvmlDeviceGetCount()))]
    finally:
        nvml.nvmlShutdown()


def discover_gpus(configured: Sequence[str] | None, environ: Mapping[str, str]) -> list[str]:
    """The GPUs workers may use: a configured list first, then the operator's CUDA_VISIBLE_DEVICES, then
    NVML's. Blocks on the driver in the last case: call it off the event loop."""
    if configured is not None:
        return list(configured)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return nvml_gpus()


class GpuInventory:
    def __init__(self, gpus: Sequence[str]) -> None:
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"GPU list names a GPU twice: {list(gpus)}")
        self.gpus = list(gpus)
        self._owner: dict[str, str] = {}

    def free(self) -> list[str]:
        return [g for g in self.gpus if g not in self._owner]

    def allocate(self, owner: str, count: int) -> tuple[str, ...]:
        """`count` free GPUs for `owner`, lowest first; all or none."""
        free = self.free()
        if count > len(free):
            raise NotEnoughGpus(f"{owner} needs {count} GPU(s); {len(free)} of {len(self.gpus)} free")
        taken = tuple(free[:count])
        for g in taken:
            self._owner[g] = owner
        return taken

    def release(self, owner: str) -> None:
        self._owner = {g: o for g, o in self._owner.items() if o != owner}
