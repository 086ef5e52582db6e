"""A container's arguments and environment -> the one fleetgate command line it runs.

Three shapes, chosen in this order:

1. `gateway [FLAGS]` as the first argument, or FLEETGATE_CONFIG set: `fleetgate gateway --config FILE`
   (a fleet file: pools of endpoints, of started workers, keys, limits).
2. A model (first argument, `--model`, MODEL or RunPod's MODEL_NAME): `fleetgate serve MODEL ... -- FLAGS`,
   the gateway and one vLLM worker in one container. vLLM's flags come after `--` (or, as with the
   vllm/vllm-openai image, straight after the model); a few common ones also come from the environment
   names vLLM guides and RunPod use (MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION, ...). The flags the gateway must
   own (`--host`, `--port`, `--served-model-name`, `--api-key`) are lifted out of vLLM's flags: the worker
   listens on loopback under fleetgate's name, and only the gateway checks keys.
3. FLEETGATE_UPSTREAMS (comma-separated URLs): `fleetgate gateway --upstream URL ...` (docker compose).

Explicit arguments beat flags after `--`, which beat the environment. Any other fleetgate command (`sim`,
`bench`, `check-config`, ...) as the first argument runs as given.

`fleetgate serve` has no flags for an API key (FLEETGATE_API_KEY, FLEETGATE_API_KEY_FILE, VLLM_API_KEY,
`--api-key`) or shutdown timing (FLEETGATE_PRE_STOP_DELAY, FLEETGATE_DRAIN_TIMEOUT): with any of them,
shape 2 is written as the equivalent fleet file. The key stays in the environment (never in argv or the
file), and VLLM_API_KEY is taken away from the worker, which would otherwise demand it from the gateway.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ADDRESS_ENV",
    "COMMANDS",
    "ENV_NAMES",
    "GATEWAY_FLAGS",
    "KEY_ENV",
    "MODEL_ENV",
    "SERVED_NAME_ENV",
    "SERVE_ENV",
    "SERVE_FLAGS",
    "VLLM_ENV",
    "Plan",
    "PlanError",
    "plan",
]

# fleetgate's own commands: run as given (serve and gateway get the environment's translation too).
COMMANDS = frozenset({"sim", "bench", "up", "status", "check-config", "keys", "usage", "--help", "--version"})

MODEL_ENV = ("MODEL", "MODEL_NAME")  # vLLM-style images, then RunPod's worker-vllm name
SERVED_NAME_ENV = ("SERVED_MODEL_NAME", "OPENAI_SERVED_MODEL_NAME_OVERRIDE")  # ours/KServe's, RunPod's
KEY_ENV = "FLEETGATE_API_KEY"
KEY_FILE_ENV = "FLEETGATE_API_KEY_FILE"
VLLM_KEY_ENV = "VLLM_API_KEY"  # vLLM reads it as --api-key's default: it must not reach the worker
CONFIG_ENV = "FLEETGATE_CONFIG"
UPSTREAMS_ENV = "FLEETGATE_UPSTREAMS"
HEALTH_PORT_ENV = "PORT_HEALTH"  # RunPod load-balancing endpoints probe GET /ping here


def _port(value: str) -> str:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("must be a port number (0-65535)")
    return str(port)


def _count(value: str) -> str:
    n = int(value)
    if n < 0:
        raise ValueError("must be 0 or more")
    return str(n)


def _positive(value: str) -> str:
    x = float(value)
    if not x > 0:
        raise ValueError("must be a positive number")
    return value.strip()


def _seconds(value: str) -> str:
    x = float(value)
    if not 0 <= x < float("inf"):
        raise ValueError("must be seconds (0 or more)")
    return value.strip()


def _fraction(value: str) -> str:
    x = float(value)
    if not 0 < x <= 1:
        raise ValueError("must be a fraction in (0, 1]")
    return value.strip()


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _switch(value: str) -> str:
    v = value.strip().lower()
    if v not in _TRUE | _FALSE:
        raise ValueError("must be true or false (1/0, yes/no, on/off)")
    return "1" if v in _TRUE else ""


@dataclass(frozen=True)
class EnvFlag:
    """An environment variable standing for a flag; `check` validates (ValueError) and normalizes."""

    env: str
    flag: str
    check: Callable[[str], str] = _text
    boolean: bool = False  # the flag takes no value: present when the variable is true
    also: tuple[str, ...] = ()  # flags that must come with it


# The address flags: `fleetgate serve` and `fleetgate gateway` both take them. PORT is the platforms' own
# (Cloud Run, RunPod and KServe set or expect it): it wins over a fleet file's listen.port.
ADDRESS_ENV = (
    EnvFlag("PORT", "--port", _port),
    EnvFlag("FLEETGATE_HOST", "--host"),
    EnvFlag("FLEETGATE_ADMIN_HOST", "--admin-host"),
    EnvFlag("FLEETGATE_ADMIN_PORT", "--admin-port", _port),
)
# `fleetgate serve`'s own flags (besides the address and the served name).
SERVE_ENV = (
    EnvFlag("FLEETGATE_ENGINE", "--engine"),
    EnvFlag("FLEETGATE_GPUS", "--gpus"),
    EnvFlag("FLEETGATE_MIN_WORKERS", "--min-workers", _count),
    EnvFlag("FLEETGATE_MAX_WORKERS", "--max-workers", _count),
    EnvFlag("FLEETGATE_IDLE_TIMEOUT", "--idle-timeout", _positive),
)
# vLLM's flags under the environment names RunPod's worker-vllm and vLLM guides use; the simulator takes them
# all, the embedded engine the first three (it has no CUDA graphs and no tool-call parser flags). Anything
# else goes after `--`.
VLLM_ENV = (
    EnvFlag("MAX_MODEL_LEN", "--max-model-len", _count),
    EnvFlag("GPU_MEMORY_UTILIZATION", "--gpu-memory-utilization", _fraction),
    EnvFlag("MAX_NUM_SEQS", "--max-num-seqs", _count),
    EnvFlag("ENFORCE_EAGER", "--enforce-eager", _switch, boolean=True),
    EnvFlag("TOOL_CALL_PARSER", "--tool-call-parser", also=("--enable-auto-tool-choice",)),
)

# The SIGTERM sequence (docs/gateway.md): Cloud Run allows 10 s after SIGTERM, Kubernetes 30 s by default.
SHUTDOWN_ENV = {
    "pre_stop_delay": EnvFlag("FLEETGATE_PRE_STOP_DELAY", "", _seconds),
    "drain_timeout": EnvFlag("FLEETGATE_DRAIN_TIMEOUT", "", _seconds),
}

GATEWAY_FLAGS = tuple(e.flag for e in ADDRESS_ENV)
# Every variable the entrypoint reads (docs/deploy.md's table; tests check recipes use no other).
ENV_NAMES = frozenset(
    {
        *MODEL_ENV,
        *SERVED_NAME_ENV,
        KEY_ENV,
        KEY_FILE_ENV,
        VLLM_KEY_ENV,
        CONFIG_ENV,
        UPSTREAMS_ENV,
        HEALTH_PORT_ENV,
        "FLEETGATE_RUNTIME_DIR",
        *(e.env for e in (*ADDRESS_ENV, *SERVE_ENV, *VLLM_ENV, *SHUTDOWN_ENV.values())),
    }
)
SERVE_FLAGS = (*GATEWAY_FLAGS, *(e.flag for e in SERVE_ENV), "--served-model-name")
_LIFTED = ("--model", "--api-key")  # taken out of the flags wherever they appear
_VALUE_CHECKS = {e.flag: e.check for e in (*ADDRESS_ENV, *SERVE_ENV)}


class PlanError(ValueError):
    """The container was given something it cannot run; the message names the variable or flag."""


@dataclass(frozen=True)
class Plan:
    argv: list[str]  # the fleetgate command line, argv[0] == "fleetgate"
    set_env: dict[str, str] = field(default_factory=dict)
    unset_env: frozenset[str] = frozenset()
    fleet_file: tuple[Path, str] | None = None  # (path, contents) written before argv runs
    health_port: int | None = None  # serve GET /ping here (RunPod) besides the gateway
    secrets: frozenset[str] = frozenset()  # env names never shown

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in self.unset_env}
        env.update(self.set_env)
        return env

    def flag(self, name: str) -> str | None:
        """The value argv gives a fleetgate flag (not one after `--`)."""
        argv = self.argv[: self.argv.index("--")] if "--" in self.argv else self.argv
        for i, a in enumerate(argv[:-1]):
            if a == name:
                return argv[i + 1]
        return None

    def describe(self) -> str:
        """The command line as a shell would take it, with the variables set for it (secrets masked)."""
        shown = [
            f"{k}={'***' if k in self.secrets else shlex.quote(v)}" for k, v in sorted(self.set_env.items())
        ]
        return " ".join([*shown, *(shlex.quote(a) for a in self.argv)])


def plan(args: Sequence[str], env: Mapping[str, str], *, runtime_dir: Path) -> Plan:
    """The command for these container arguments and this environment (PlanError when it cannot run).
    `runtime_dir` is where a generated fleet file would go."""
    args = list(args)
    health = _health_port(env)
    if args and args[0] in COMMANDS:
        return Plan(argv=["fleetgate", *args], health_port=health)
    if args and args[0] == "gateway":
        return _gateway(args[1:], env, health)
    if args and args[0] == "serve":
        args = args[1:]
    head, tail = _split(args)
    settings: dict[str, str] = {}
    sources: dict[str, str] = {}  # setting -> where it came from, for messages
    head = _take_flags(head, (*SERVE_FLAGS, *_LIFTED), settings, sources, "argument")
    tail = _take_flags(tail, ("--served-model-name", "--host", "--port", *_LIFTED), settings, sources,
                       "flag after --")  # fmt: skip
    if head and not head[0].startswith("-"):
        settings.setdefault("--model", head.pop(0))
    else:
        settings.setdefault("--model", "")
    if not settings["--model"]:
        model = _first(env, MODEL_ENV)
        if model is not None:
            settings["--model"], sources["--model"] = model
    if env.get(CONFIG_ENV):
        if settings["--model"]:
            raise PlanError(f"{CONFIG_ENV} and a model ({sources.get('--model', 'argument')}) both given: "
                            "a fleet file names its models itself; set one of them")  # fmt: skip
        return _gateway(list(args), env, health)
    if not settings["--model"]:
        if env.get(UPSTREAMS_ENV):
            return _gateway(list(args), env, health)
        raise PlanError(
            "nothing to serve: set MODEL (or MODEL_NAME) to a hub id or model directory, "
            f"{CONFIG_ENV} to a fleet file, or {UPSTREAMS_ENV} to vLLM base URLs (docs/deploy.md)"
        )
    return _serve(settings, sources, head, tail, env, health, runtime_dir)


def _serve(
    settings: dict[str, str],
    sources: dict[str, str],
    head: list[str],
    tail: list[str],
    env: Mapping[str, str],
    health: int | None,
    runtime_dir: Path,
) -> Plan:
    served = _first(env, SERVED_NAME_ENV)
    if "--served-model-name" not in settings and served is not None:
        settings["--served-model-name"] = served[0]
    for e in (*ADDRESS_ENV, *SERVE_ENV):
        if e.flag not in settings and env.get(e.env, "") != "":
            settings[e.flag] = _checked(e, env[e.env])
    for flag, check in _VALUE_CHECKS.items():
        if flag in settings and sources.get(flag, "").startswith(("argument", "flag")):
            settings[flag] = _checked_flag(flag, sources[flag], settings[flag], check)
    engine_args = [*head, *tail, *_vllm_env_flags([*head, *tail], env)]
    key, key_env = _api_key(settings, env)
    shutdown = {name: _checked(e, env[e.env]) for name, e in SHUTDOWN_ENV.items() if env.get(e.env, "") != ""}
    model = settings.pop("--model")
    settings.pop("--api-key", None)
    unset = frozenset({VLLM_KEY_ENV}) if VLLM_KEY_ENV in env else frozenset()
    if key is None and not shutdown:
        argv = ["fleetgate", "serve", model]
        for flag in SERVE_FLAGS:
            if flag in settings:
                argv += [flag, settings[flag]]
        if engine_args:
            argv += ["--", *engine_args]
        return Plan(argv=argv, unset_env=unset, health_port=health)
    # What `fleetgate serve` has no flag for (a key, shutdown timing): the same pool it would build, written
    # as a fleet file, the key by its variable's name.
    workers: dict[str, object] = {"model": model, "engine_args": engine_args}
    for flag, name, convert in _WORKER_FIELDS:
        if flag in settings:
            workers[name] = convert(settings[flag])
    # `fleetgate serve` keeps one worker by default; a fleet file's default is 0 (scale to zero).
    workers.setdefault("min_workers", 1)
    workers.setdefault("engine", "vllm")
    fleet: dict[str, object] = {"pools": [{"name": "default", "workers": workers}]}
    if key is not None:
        fleet["keys"] = [{"name": "default", **key}]
    if shutdown:
        fleet["shutdown"] = {name: float(value) for name, value in shutdown.items()}
    path = runtime_dir / "fleetgate-serve.json"
    text = json.dumps(fleet, indent=2)
    argv = ["fleetgate", "gateway", "--config", str(path)]
    for flag in GATEWAY_FLAGS:
        if flag in settings:
            argv += [flag, settings[flag]]
    set_env = {KEY_ENV: key_env} if key_env is not None else {}
    return Plan(argv=argv, set_env=set_env, unset_env=unset, fleet_file=(path, text), health_port=health,
                secrets=frozenset(set_env))  # fmt: skip


_WORKER_FIELDS: tuple[tuple[str, str, Callable[[str], object]], ...] = (
    ("--engine", "engine", str),
    ("--served-model-name", "served_model_name", str),
    ("--gpus", "gpus", lambda v: [g.strip() for g in v.split(",") if g.strip()]),
    ("--min-workers", "min_workers", int),
    ("--max-workers", "max_workers", int),
    ("--idle-timeout", "idle_timeout", float),
)


def _api_key(settings: dict[str, str], env: Mapping[str, str]) -> tuple[dict[str, str] | None, str | None]:
    """The fleet file's key entry and, when the key had to be moved, the value for FLEETGATE_API_KEY."""
    if "--api-key" in settings:
        return {"key_env": KEY_ENV}, _text_or_fail("--api-key", settings["--api-key"])
    if env.get(KEY_ENV):
        return {"key_env": KEY_ENV}, None
    if env.get(KEY_FILE_ENV):
        return {"key_file": env[KEY_FILE_ENV]}, None
    if env.get(VLLM_KEY_ENV):
        return {"key_env": KEY_ENV}, env[VLLM_KEY_ENV]
    return None, None


def _gateway(args: list[str], env: Mapping[str, str], health: int | None) -> Plan:
    for name in (KEY_ENV, KEY_FILE_ENV, VLLM_KEY_ENV):
        if env.get(name):
            raise PlanError(f"{name} is for a single model (MODEL); with a fleet file or upstreams, "
                            "list keys in the fleet file (keys: [{name, key_env}])")  # fmt: skip
    for e in SHUTDOWN_ENV.values():
        if env.get(e.env):
            raise PlanError(f"{e.env} is for a single model (MODEL); with a fleet file or upstreams, "
                            "set shutdown.pre_stop_delay / drain_timeout in the fleet file")  # fmt: skip
    head, tail = _split(args)
    if tail:
        raise PlanError("flags after -- are vLLM's: the gateway starts no vLLM of its own "
                        "(use a fleet file's workers.engine_args)")  # fmt: skip
    settings: dict[str, str] = {}
    sources: dict[str, str] = {}
    rest = _take_flags(head, ("--config", *GATEWAY_FLAGS), settings, sources, "argument")
    argv = ["fleetgate", "gateway"]
    if "--config" in settings:
        argv += ["--config", settings["--config"]]
    elif env.get(CONFIG_ENV):
        argv += ["--config", env[CONFIG_ENV]]
    elif env.get(UPSTREAMS_ENV):
        for url in env[UPSTREAMS_ENV].split(","):
            if url.strip():
                argv += ["--upstream", url.strip()]
    for e in ADDRESS_ENV:
        if e.flag in settings:
            argv += [e.flag, _checked_flag(e.flag, "argument", settings[e.flag], e.check)]
        elif env.get(e.env, "") != "":
            argv += [e.flag, _checked(e, env[e.env])]
    return Plan(argv=[*argv, *rest], unset_env=frozenset(), health_port=health)


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    if "--" in args:
        i = args.index("--")
        return args[:i], args[i + 1 :]
    return args, []


def _take_flags(
    args: list[str], names: Sequence[str], settings: dict[str, str], sources: dict[str, str], where: str
) -> list[str]:
    """Remove `--flag value` / `--flag=value` for these names into settings (first source wins)."""
    rest: list[str] = []
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name not in names:
            rest.append(args[i])
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args) or args[i + 1] == "--":
                raise PlanError(f"{name} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        if name not in settings:
            settings[name] = value
            sources[name] = f"{where} {name}"
    return rest


def _vllm_env_flags(given: Sequence[str], env: Mapping[str, str]) -> list[str]:
    present = {a.partition("=")[0] for a in given if a.startswith("--")}
    out: list[str] = []
    for e in VLLM_ENV:
        raw = env.get(e.env)
        if raw is None or e.flag in present:
            continue
        value = _checked(e, raw)
        if e.boolean:
            out += [e.flag] if value else []
            continue
        out += [*(a for a in e.also if a not in present), e.flag, value]
    return out


def _checked(e: EnvFlag, raw: str) -> str:
    try:
        return e.check(raw)
    except ValueError as exc:
        raise PlanError(f"{e.env}={raw!r}: {_reason(exc)}") from None


def _checked_flag(flag: str, source: str, raw: str, check: Callable[[str], str]) -> str:
    try:
        return check(raw)
    except ValueError as exc:
        raise PlanError(f"{source.split()[0]} {flag} {raw!r}: {_reason(exc)}") from None


def _text_or_fail(flag: str, raw: str) -> str:
    if not raw.strip():
        raise PlanError(f"{flag} must not be empty")
    return raw


def _reason(exc: ValueError) -> str:
    text = str(exc)
    return text if text.startswith("must") else "not a number"


def _first(env: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    for name in names:
        if env.get(name, "").strip():
            return env[name].strip(), name
    return None


def _health_port(env: Mapping[str, str]) -> int | None:
    raw = env.get(HEALTH_PORT_ENV, "")
    if not raw.strip():
        return None
    value = int(_checked(EnvFlag(HEALTH_PORT_ENV, "", _port), raw))
    # RunPod's examples set PORT_HEALTH = PORT: the gateway's own port, where GET /ping is not fleetgate's.
    port = env.get("PORT", "").strip() or "8000"
    if port.isdigit() and value == int(port):
        raise PlanError(f"{HEALTH_PORT_ENV}={raw} is the gateway's own port: give the health check a port "
                        "of its own (e.g. PORT=8000, PORT_HEALTH=8002)")  # fmt: skip
    return value
