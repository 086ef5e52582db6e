"""Engines by the name a pool's `workers.engine` gives."""

from __future__ import annotations

from fleetgate.engines import embedded_launch, sim, vllm
from fleetgate.engines.base import Engine

ENGINES: dict[str, Engine] = {
    "vllm": vllm.ENGINE,
    "sim": sim.ENGINE,
    "embedded": embedded_launch.ENGINE,
}
