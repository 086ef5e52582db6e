"""From `fleetgate sim` flags (vLLM's names) to the settings of each simulated server."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import ValidationError

from fleetgate.sim.engine import EngineArgs
from fleetgate.sim.faults import Faults, parse_error_rates
from fleetgate.sim.kv_publisher import KVEventsConfig
from fleetgate.sim.profiles import load_profile
from fleetgate.sim.settings import SimSettings

_PER_REPLICA = ("--replicas", "--port", "--seed", "--replica-index")


def build_settings(
    *,
    profile: str,
    host: str,
    port: int,
    time_scale: float,
    served: list[str],
    model: str | None,
    max_model_len: int | None,
    max_num_seqs: int | None,
    max_num_batched_tokens: int | None,
    num_gpu_blocks_override: int | None,
    block_size: int,
    enable_prefix_caching: bool,
    enforce_eager: bool,
    enable_lora: bool,
    max_loras: int,
    lora_modules: list[str],
    enable_sleep_mode: bool,
    kv_events_config: str | None,
    auto_tool_choice: bool,
    tool_call_parser: str | None,
    seed: int | None,
    startup_time: float | None,
    admin: bool,
    dev_mode: bool,
    runtime_lora: bool,
    fault_error_rate: str,
    fault_hang_rate: float,
    fault_crash_rate: float,
    fault_crash_after_tokens: int,
    fault_first_byte_delay: float,
    fault_health: str,
    replica_index: int = 0,
    reuse_port: bool = False,
) -> tuple[SimSettings, float, dict[str, object]]:
    """Settings, startup seconds (virtual) and vLLM's "non-default args" for the startup log."""
    p = load_profile(profile)
    blocks = num_gpu_blocks_override or p.kv.num_gpu_blocks
    if block_size != p.kv.block_size and num_gpu_blocks_override is None:
        blocks = p.kv.num_gpu_blocks * p.kv.block_size // block_size
    model_len = max_model_len or p.max_model_len
    if model_len > blocks * block_size:
        raise ValueError(
            f"To serve at least one request with the models's max seq len ({model_len}), "
            f"{model_len} tokens of KV cache are needed, which is larger than the available KV cache "
            f"({blocks * block_size} tokens). Try increasing --num-gpu-blocks-override or decreasing "
            "--max-model-len."
        )
    adapters: dict[str, str] = {}
    for spec in lora_modules:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules expects NAME=PATH, got {spec!r}")
        adapters[name] = path
    if adapters and not enable_lora:
        raise ValueError("--lora-modules needs --enable-lora")
    if auto_tool_choice and not tool_call_parser:
        raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
    kv_events = KVEventsConfig.parse(kv_events_config) if kv_events_config else None
    if kv_events is not None and replica_index:
        # Each replica publishes on its own port: the configured one plus its index.
        kv_events = kv_events.model_copy(
            update={
                "endpoint": re.sub(r":(\d+)$", lambda m: f":{int(m[1]) + replica_index}", kv_events.endpoint)
            }
        )
    try:
        faults = Faults(
            error_rates=parse_error_rates(fault_error_rate),
            hang_rate=fault_hang_rate,
            crash_rate=fault_crash_rate,
            crash_after_tokens=fault_crash_after_tokens,
            first_byte_delay=fault_first_byte_delay,
            health=fault_health,
        )
    except ValidationError as e:
        raise ValueError(f"fault flags: {e.errors()[0]['msg']}") from None
    engine = EngineArgs(
        max_model_len=model_len,
        max_num_seqs=max_num_seqs or p.limits.max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens or p.limits.max_num_batched_tokens,
        num_gpu_blocks=blocks,
        block_size=block_size,
        enable_prefix_caching=enable_prefix_caching,
        enable_lora=enable_lora,
        max_loras=max_loras,
        enforce_eager=enforce_eager,
        time_scale=time_scale,
    )
    model_path = model or p.model
    settings = SimSettings(
        profile=p,
        engine=engine,
        served_model_names=served or [model_path],
        model_path=model_path,
        host=host,
        port=port,
        seed=seed,
        enable_sleep_mode=enable_sleep_mode,
        dev_mode=dev_mode,
        runtime_lora=runtime_lora,
        lora_modules=adapters,
        auto_tool_choice=auto_tool_choice,
        tool_call_parser=tool_call_parser,
        kv_events=kv_events,
        faults=faults,
        admin=admin,
        reuse_port=reuse_port,
    )
    non_default: dict[str, object] = {"model_tag": model_path, "host": host, "model": model_path}
    if served:
        non_default["served_model_name"] = served
    for key, value, default in (
        ("port", port, 8000),
        ("max_model_len", max_model_len, None),
        ("max_num_seqs", max_num_seqs, None),
        ("max_num_batched_tokens", max_num_batched_tokens, None),
        ("num_gpu_blocks_override", num_gpu_blocks_override, None),
        ("enforce_eager", enforce_eager, False),
        ("enable_lora", enable_lora, False),
        ("enable_sleep_mode", enable_sleep_mode, False),
        ("kv_events_config", kv_events_config, None),
        ("enable_auto_tool_choice", auto_tool_choice, False),
        ("tool_call_parser", tool_call_parser, None),
    ):
        if value != default:
            non_default[key] = value
    startup = p.startup.total(enforce_eager) if startup_time is None else startup_time
    return settings, startup, non_default


def replica_argv(argv: Sequence[str], index: int, port: int, seed: int | None, same_port: bool) -> list[str]:
    """The command line of replica `index`: the user's flags with its own port, seed and index."""
    out: list[str] = []
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _PER_REPLICA:
            skip = "=" not in arg
            continue
        out.append(arg)
    out += [
        "--replicas",
        "1",
        "--port",
        str(port if same_port else port + index),
        "--replica-index",
        str(index),
    ]
    if seed is not None:
        out += ["--seed", str(seed + index)]
    return out
