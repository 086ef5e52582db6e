"""What one simulated server is built from: the settings the CLI makes from vLLM-style flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetgate.sim.engine import EngineArgs
from fleetgate.sim.faults import Faults
from fleetgate.sim.kv_publisher import KVEventsConfig
from fleetgate.sim.profiles import Profile


@dataclass
class SimSettings:
    """Everything one simulated server needs; built by the CLI from vLLM-style flags."""

    profile: Profile
    engine: EngineArgs
    served_model_names: list[str]
    model_path: str
    host: str = "127.0.0.1"
    port: int = 8000
    seed: int | None = None
    enable_sleep_mode: bool = False
    dev_mode: bool = False
    runtime_lora: bool = False
    lora_modules: dict[str, str] = field(default_factory=dict)
    auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    kv_events: KVEventsConfig | None = None
    faults: Faults = field(default_factory=lambda: Faults())
    admin: bool = False
    reuse_port: bool = False
