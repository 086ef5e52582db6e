"""Rules several config models share: names, environment variable names, file paths, durations."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationInfo

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STRICT = ConfigDict(extra="forbid", frozen=True)


def context_of(info: ValidationInfo) -> tuple[Mapping[str, str], Path | None]:
    ctx = info.context if isinstance(info.context, Mapping) else {}
    env = ctx.get("env")
    base = ctx.get("base_dir")
    return (env if isinstance(env, Mapping) else os.environ), (base if isinstance(base, Path) else None)


def absolute_path(path: str | None, info: ValidationInfo) -> str | None:
    if path is None:
        return None
    if not path.strip():
        raise ValueError("must be a file path")
    base = context_of(info)[1] or Path.cwd()
    return str(base / path)


def check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        rule = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise ValueError(f"must be {rule} (got {value!r})")
    return value


def env_var_name(name: str | None) -> str | None:
    if name is not None and not _ENV_NAME_RE.fullmatch(name):
        raise ValueError("must be an environment variable name (letters, digits and _, not a digit first)")
    return name


def bad_env_name(name: str) -> bool:
    return not _ENV_NAME_RE.fullmatch(name)


def seconds(default: float, description: str) -> Any:
    return Field(default=default, gt=0, allow_inf_nan=False, description=description)
