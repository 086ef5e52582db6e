"""Fleet files built from command-line flags (`gateway --upstream`, `serve MODEL`); problems name the flag."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from fleetgate.config.fleet import FleetConfig
from fleetgate.config.problems import ConfigError, Loc, Problem, explain, render_loc
from fleetgate.config.server import AdminConfig


def config_from_upstreams(
    upstreams: Sequence[str],
    host: str | None = None,
    port: int | None = None,
    *,
    admin: AdminConfig | None = None,
) -> FleetConfig:
    """The no-file mode (`fleetgate gateway --upstream URL ...`): one pool "default" with those endpoints and
    no model list (models are discovered from the upstreams' /v1/models); everything else default, host and
    port included when None."""
    listen = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    data: dict[str, Any] = {"listen": listen, "pools": [{"name": "default", "endpoints": list(upstreams)}]}
    if admin is not None:
        data["admin"] = admin.model_dump()
    return _from_command_line(data)


def config_for_model(
    model: str,
    *,
    engine: str,
    served_model_name: str | None,
    engine_args: Sequence[str],
    gpus: Sequence[str] | None,
    min_workers: int,
    max_workers: int,
    idle_timeout: float,
    api_key: str | None = None,
) -> FleetConfig:
    """The one-liner (`fleetgate serve MODEL`): one pool "default" of started workers; everything else
    default. `api_key` (vLLM's --api-key) makes the gateway take only that bearer key, as tenant "default".
    Raises ConfigError naming the flag."""
    workers: dict[str, Any] = {
        "engine": engine,
        "model": model,
        "engine_args": list(engine_args),
        "min_workers": min_workers,
        "max_workers": max_workers,
        "idle_timeout": idle_timeout,
    }
    if served_model_name is not None:
        workers["served_model_name"] = served_model_name
    if gpus is not None:
        workers["gpus"] = list(gpus)
    data: dict[str, Any] = {"pools": [{"name": "default", "workers": workers}]}
    if api_key is not None:
        data["keys"] = [{"name": "default", "key": api_key}]
    return _from_command_line(data)


def _from_command_line(data: dict[str, Any]) -> FleetConfig:
    """Validate a config built from flags; problems name the flag, not a file position."""
    try:
        return FleetConfig.model_validate(data, context={"env": os.environ})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            for loc, message in explain(err, FleetConfig):
                problems.append(Problem("<command line>", 0, 0, _flag_for(loc), message))
        raise ConfigError(problems) from None


def _flag_for(loc: Loc) -> str:
    match loc:
        case ("pools", 0, "workers", "model", *_):
            return "MODEL"
        case ("pools", 0, "workers", "engine_args", *_):
            return "engine flags (after --)"
        case ("pools", 0, "workers", str(field), *_):
            return f"--{field.replace('_', '-')}"
        case ("pools", 0, "endpoints", int(i), *_):
            return f"--upstream #{i + 1}"
        case ("pools", 0, "endpoints", *_):
            return "--upstream"
        case ("keys", *_):
            return "--api-key"
        case ("listen", field, *_):
            return f"--{field}"
        case _:
            return render_loc(loc) or "(top level)"
