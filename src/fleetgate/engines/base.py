"""What every engine module provides: a command line for one worker and a reader of its startup log.

An engine is data, not a class hierarchy: a name, a function from launch arguments to a `Launch`, a function
from one log line to the startup phases it shows, and whether the engine can sleep. Providers pick one by
name from `fleetgate.engines.registry.ENGINES`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "Diagnosis",
    "Engine",
    "Launch",
    "LaunchArgs",
    "LineRule",
    "LogEvent",
    "Phase",
    "make_launch",
    "serve_flags",
]

# vLLM's dev-mode gate: it exposes /sleep and /wake_up (and /reset_prefix_cache, /is_sleeping). Workers
# listen on 127.0.0.1 only, so turning it on never shows those routes to tenants.
DEV_MODE = "VLLM_SERVER_DEV_MODE"
HF_TOKEN = "HF_TOKEN"


class Phase(StrEnum):
    """Where a starting worker is, in the order a cold start passes through them."""

    INIT = "init"  # interpreter, imports, config, engine process spawn
    DOWNLOAD = "download"  # weights fetched from the hub
    LOAD = "load"  # weights read into device memory
    COMPILE = "compile"  # torch.compile, CUDA graph capture, profiling and warm-up (vLLM)
    WARMUP = "warmup"  # KV cache reserved, server warming up: engines that compile nothing
    READY = "ready"  # the server says it listens


@dataclass(frozen=True)
class LogEvent:
    """What one log line says about startup.

    `ago` dates the phase's start back from the line (a line that reports a finished download and its
    duration); `progress` is the fraction done where the log shows a bar.
    """

    phase: Phase
    ago: float = 0.0
    progress: float | None = None


@dataclass(frozen=True)
class LineRule:
    """A log line that shows a phase. Named groups: `pct`, a progress bar's percentage; `seconds`, how long
    the phase has taken, for a line printed once it is over (which `then` follows at once)."""

    pattern: re.Pattern[str]
    phase: Phase
    then: Phase | None = None


def match_rules(rules: Sequence[LineRule], line: str) -> list[LogEvent]:
    """The events of the first rule that matches the line."""
    for rule in rules:
        if m := rule.pattern.search(line):
            pct, seconds = m.groupdict().get("pct"), m.groupdict().get("seconds")
            # Bars can overshoot 100 on their last redraw.
            progress = None if pct is None else min(int(pct), 100) / 100
            event = LogEvent(rule.phase, ago=0.0 if seconds is None else float(seconds), progress=progress)
            return [event] if rule.then is None else [event, LogEvent(rule.then)]
    return []


@dataclass(frozen=True)
class Diagnosis:
    """A log line that means the worker can never start as launched (no GPU, a missing package, a model
    that cannot be found, a flag the engine rejects, not enough memory): retrying will not help. `message`
    is what to tell the user, in command-line words; `{0}`.. and `{name}` take the match's groups."""

    pattern: re.Pattern[str]
    message: str

    def explain(self, line: str) -> str | None:
        m = self.pattern.search(line)
        if m is None:
            return None
        groups = [_unquote(g) for g in m.groups()]
        named = {k: _unquote(v) for k, v in m.groupdict().items()}
        return self.message.format(*groups, **named)


def _unquote(value: str | None) -> str:
    """A matched group as text: JSON strings (the embedded engine's log values) are decoded."""
    value = (value or "").strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        with contextlib.suppress(ValueError):
            return str(json.loads(value))
    return value


def diagnose(rules: Sequence[Diagnosis], line: str) -> str | None:
    for rule in rules:
        if (message := rule.explain(line)) is not None:
            return message
    return None


@dataclass(frozen=True)
class LaunchArgs:
    """One worker's launch, resolved: everything an engine needs to write its command line."""

    model: str
    served_model_name: str
    port: int
    engine_args: Sequence[str] = ()
    gpus: Sequence[str] = ()
    sleep: bool = False
    hf_token: str | None = None
    offline: bool = False
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]  # set on top of the provider's own environment
    unset: frozenset[str] = frozenset()  # removed from it
    secrets: frozenset[str] = frozenset()  # names in env whose values are never shown

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """The child's whole environment: PATH, caches and proxies carry over from `base`."""
        env = {k: v for k, v in base.items() if k not in self.unset}
        env.update(self.env)
        return env

    def describe(self) -> str:
        """The command and the variables fleetgate set, fit for a log: secret values masked."""
        shown = [f"{k}={'***' if k in self.secrets else v}" for k, v in sorted(self.env.items())]
        return " ".join([*shown, *self.argv])


@dataclass(frozen=True)
class Engine:
    name: str
    command: Callable[[LaunchArgs], Launch]
    rules: Sequence[LineRule]  # how its log shows startup phases
    sleeps: bool  # answers POST /sleep and /wake_up (with the dev-mode gate)
    fatal: Sequence[Diagnosis] = ()  # log lines that mean a restart would fail the same way
    missing: str = ""  # what to do when its program is not found

    def parse_line(self, line: str) -> list[LogEvent]:
        """The startup phases one line of the engine's output shows (none for most lines)."""
        return match_rules(self.rules, line)

    def diagnose(self, line: str) -> str | None:
        """Why the worker cannot start, when this line says so; else None."""
        return diagnose(self.fatal, line)


def serve_flags(args: LaunchArgs) -> list[str]:
    """The flags every engine takes under vLLM's names: loopback only, its port, the served name."""
    flags = ["--host", "127.0.0.1", "--port", str(args.port), "--served-model-name", args.served_model_name]
    if args.sleep:
        flags.append("--enable-sleep-mode")
    return flags


def make_launch(argv: list[str], args: LaunchArgs) -> Launch:
    """A launch of `argv` with the environment every engine needs: GPUs, hub token, offline, dev mode."""
    env: dict[str, str] = {}
    # A dev-mode gate inherited from the operator's shell must not open /sleep on workers that do not sleep.
    unset = frozenset() if args.sleep else frozenset({DEV_MODE})
    if args.gpus:
        # NVML numbers GPUs in PCI bus order; CUDA's default order is fastest-first. Indices only match
        # when CUDA is told to use the bus order too.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(args.gpus)
    secrets: frozenset[str] = frozenset()
    if args.hf_token:
        env[HF_TOKEN] = args.hf_token
        secrets = frozenset({HF_TOKEN})
    if args.offline:
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    if args.sleep:
        env[DEV_MODE] = "1"
    env.update(args.env)
    return Launch(argv=argv, env=env, unset=unset, secrets=secrets)
