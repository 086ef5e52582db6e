"""GPU inventory: where the list comes from, and no GPU ever held by two workers."""

from __future__ import annotations

import sys
import types

import pytest

from fleetgate.scaling.gpus import GpuInventory, NotEnoughGpus, discover_gpus, nvml_gpus


def test_allocation_never_overlaps_and_is_all_or_nothing() -> None:
    inv = GpuInventory(["0", "1", "2", "3"])
    assert inv.allocate("a", 2) == ("0", "1")
    assert inv.allocate("b", 1) == ("2",)
    with pytest.raises(NotEnoughGpus, match="c needs 2 GPU"):
        inv.allocate("c", 2)
    assert inv.free() == ["3"]  # the failed request took nothing
    inv.release("a")
    assert inv.allocate("c", 2) == ("0", "1")
    assert inv.allocate("d", 0) == ()
    with pytest.raises(ValueError, match="twice"):
        GpuInventory(["0", "0"])


def test_sources_in_order() -> None:
    assert discover_gpus(["3", "5"], {"CUDA_VISIBLE_DEVICES": "0"}) == ["3", "5"]
    assert discover_gpus(None, {"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert discover_gpus(None, {"CUDA_VISIBLE_DEVICES": ""}) == []


class FakeNvml(types.ModuleType):
    def __init__(self, count: int, fail: bool = False) -> None:
        super().__init__("pynvml")
        self.count, self.fail, self.open = count, fail, False

    def nvmlInit(self) -> None:
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")
        self.open = True

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlShutdown(self) -> None:
        self.open = False


def test_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert nvml_gpus() == []
    fake = FakeNvml(3)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert discover_gpus(None, {}) == ["0", "1", "2"]
    assert not fake.open
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(2, fail=True))  # binding present, no driver
    assert nvml_gpus() == []
