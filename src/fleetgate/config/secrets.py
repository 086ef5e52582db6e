"""Secrets (API keys, upstream credentials, hub tokens): read once from a literal, an environment variable
or a file into a `SecretStr` that is never printed, dumped or put in an error."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr, SerializationInfo

from fleetgate.config.problems import Loc


def resolve_secret(
    *,
    literal: SecretStr | None = None,
    env_var: str | None = None,
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> SecretStr | None:
    """The secret from whichever source is given (at most one): a literal, an environment variable (looked
    up in `env`, default os.environ) or a file (surrounding whitespace stripped). None when none is given.
    Raises ValueError, whose message never contains the secret, when the source is missing, unreadable or
    empty, or the secret contains whitespace."""
    given = [s for s in (literal, env_var, file) if s is not None]
    if len(given) > 1:
        raise ValueError("give at most one source for a secret")
    if literal is not None:
        value, source = literal.get_secret_value(), "the literal"
    elif env_var is not None:
        environ = os.environ if env is None else env
        if env_var not in environ:
            raise ValueError(f"environment variable {env_var} is not set")
        value, source = environ[env_var].strip(), f"environment variable {env_var}"
    elif file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read {file}: {exc.strerror or type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{file} is not UTF-8 text") from None
        source = f"file {file}"
    else:
        return None
    if not value:
        raise ValueError(f"{source} is empty")
    if any(c.isspace() for c in value):
        raise ValueError(f"{source} holds a secret with whitespace inside (one token expected)")
    return SecretStr(value)


def secret_source_checks(values: Mapping[str, object], required: bool) -> list[tuple[Loc, str]]:
    given = [name for name, v in values.items() if v is not None]
    names = ", ".join(values)
    if len(given) > 1:
        return [((given[1],), f"give only one of {names} (got {' and '.join(given)})")]
    if required and not given:
        return [((), f"needs one of {names}")]
    return []


def reveal(value: SecretStr | None, info: SerializationInfo) -> str | None:
    if value is None:
        return None
    ctx = info.context if isinstance(info.context, Mapping) else {}
    return value.get_secret_value() if ctx.get("reveal_secrets") else str(value)
