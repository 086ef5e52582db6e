"""The fleet file (YAML) and the gateway's environment settings: pydantic models, loading, and errors that
point at a file, line and column. This module is the only place defaults live; docs/fleet-file.md is its
reference.

    config = load_config("fleet.yaml")       # FleetConfig, or ConfigError listing every problem
    config = config_from_upstreams(["http://127.0.0.1:9001"], "0.0.0.0", 8000)   # gateway --upstream URL
    path = config_path(cli_value, os.environ)   # --config > FLEETGATE_CONFIG > ./fleet.yaml

Secrets (`keys[].key_env`/`key_file`, `endpoints[].api_key_env`/`api_key_file`) are read once, at load time,
into `SecretStr` values (`KeyConfig.secret`, `EndpointConfig.secret`) that are never printed, dumped or put in
errors.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_FILE",
    "SCORERS",
    "AdapterConfig",
    "AdminConfig",
    "ConfigError",
    "ConfigWarning",
    "EndpointConfig",
    "FleetConfig",
    "HealthConfig",
    "KeyConfig",
    "LimitsConfig",
    "ListenConfig",
    "LogConfig",
    "ModelEntry",
    "PoolConfig",
    "Problem",
    "RetriesConfig",
    "RoutingConfig",
    "SaturationConfig",
    "ScalingConfig",
    "ScrapeConfig",
    "SessionConfig",
    "ShutdownConfig",
    "TimeoutsConfig",
    "WorkersConfig",
    "config_for_model",
    "config_from_upstreams",
    "config_path",
    "dump_config",
    "load_config",
    "normalize_url",
    "parse_config",
    "resolve_secret",
]

CONFIG_ENV_VAR = "FLEETGATE_CONFIG"
DEFAULT_CONFIG_FILE = "fleet.yaml"
# The scorers the picker knows (routing/ registers one per name) and their default weights.
SCORERS: dict[str, float] = {"load": 1.0, "prefix": 2.0, "lora": 1.0, "session": 1.0}

Loc = tuple[str | int, ...]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_SECRET_FIELDS = frozenset({"key", "api_key"})
_STRICT = ConfigDict(extra="forbid", frozen=True)


# ---- errors ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a fleet file: where (file, 1-based line and column; 0 = no position) and what."""

    file: str
    line: int
    column: int
    path: str  # key path, e.g. "pools[1].endpoints[0].url"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file
        return f"{where}: {self.path}: {self.message}"


class ConfigError(ValueError):
    """A fleet file (or command line) that does not validate; `problems` lists each, `str()` one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigWarning(UserWarning):
    """A fleet file that loads but does something discouraged (a literal secret in the file)."""


def _problems(*items: tuple[Loc, str]) -> PydanticCustomError:
    """A validation error that carries several problems, each at a key path relative to the model raising it;
    load_config maps each to its own YAML position."""
    summary = "; ".join(f"{_render_loc(loc)}: {msg}" if loc else msg for loc, msg in items)
    return PydanticCustomError("fleetgate", "{summary}", {"summary": summary, "problems": list(items)})


def _render_loc(loc: Loc) -> str:
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out


# ---- secrets -----------------------------------------------------------------------------------------------


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


def _context(info: ValidationInfo) -> tuple[Mapping[str, str], Path | None]:
    ctx = info.context if isinstance(info.context, Mapping) else {}
    env = ctx.get("env")
    base = ctx.get("base_dir")
    return (env if isinstance(env, Mapping) else os.environ), (base if isinstance(base, Path) else None)


def _secret_source_checks(values: Mapping[str, object], required: bool) -> list[tuple[Loc, str]]:
    given = [name for name, v in values.items() if v is not None]
    names = ", ".join(values)
    if len(given) > 1:
        return [((given[1],), f"give only one of {names} (got {' and '.join(given)})")]
    if required and not given:
        return [((), f"needs one of {names}")]
    return []


def _absolute(path: str | None, info: ValidationInfo) -> str | None:
    if path is None:
        return None
    if not path.strip():
        raise ValueError("must be a file path")
    base = _context(info)[1] or Path.cwd()
    return str(base / path)


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        rule = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise ValueError(f"must be {rule} (got {value!r})")
    return value


def _env_var_name(name: str | None) -> str | None:
    if name is not None and not _ENV_NAME_RE.fullmatch(name):
        raise ValueError("must be an environment variable name (letters, digits and _, not a digit first)")
    return name


def _reveal(value: SecretStr | None, info: SerializationInfo) -> str | None:
    if value is None:
        return None
    ctx = info.context if isinstance(info.context, Mapping) else {}
    return value.get_secret_value() if ctx.get("reveal_secrets") else str(value)


# ---- listeners, process-wide settings ----------------------------------------------------------------------


class ListenConfig(BaseModel):
    """Where the OpenAI API (/v1/*) and /health, /ready listen. Port 0 = any free port."""

    model_config = _STRICT

    host: str = Field(default="0.0.0.0", min_length=1, description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port; 0 = any free port.")


class AdminConfig(BaseModel):
    """Where /admin/* and /metrics listen: never tenant-facing, loopback by default."""

    model_config = _STRICT

    host: str = Field(default="127.0.0.1", min_length=1, description="Address to bind.")
    port: int = Field(default=8001, ge=0, le=65535, description="TCP port; 0 = any free port.")


class ShutdownConfig(BaseModel):
    """On SIGTERM: /ready fails at once, serving continues `pre_stop_delay` s, then streams drain."""

    model_config = _STRICT

    pre_stop_delay: float = Field(
        default=5.0, ge=0, allow_inf_nan=False, description="Seconds still serving after /ready fails."
    )
    drain_timeout: float = Field(
        default=30.0, ge=0, allow_inf_nan=False, description="Seconds in-flight requests may take to finish."
    )


class LogConfig(BaseModel):
    """The gateway's own log lines."""

    model_config = _STRICT

    format: Literal["json", "text"] = Field(default="text", description="json (one object per line) | text.")
    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Lowest level.")

    @field_validator("format", "level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class KeyConfig(BaseModel):
    """A tenant's API key: clients send it as `Authorization: Bearer <key>`. Exactly one of key_env, key_file,
    key (a literal in the file: discouraged, load_config warns). The secret is read at load time."""

    model_config = _STRICT

    name: str = Field(description="The tenant's name (logs, metrics).")
    key_env: str | None = Field(default=None, description="Environment variable holding the key.")
    key_file: str | None = Field(
        default=None, description="File holding the key (relative to the fleet file)."
    )
    key: SecretStr | None = Field(default=None, description="The key itself (discouraged).")
    priority: int = Field(default=0, description="Higher is served first; < 0 = sheddable under load.")

    _secret: SecretStr | None = PrivateAttr(default=None)

    @property
    def secret(self) -> SecretStr:
        """The key's value, whatever its source."""
        assert self._secret is not None
        return self._secret

    _name = field_validator("name")(_check_name)

    @field_validator("key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return _env_var_name(value)

    @field_validator("key_file")
    @classmethod
    def _file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _absolute(value, info)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Self:
        sources = {"key_env": self.key_env, "key_file": self.key_file, "key": self.key}
        problems = _secret_source_checks(sources, required=True)
        if problems:
            raise _problems(*problems)
        env = _context(info)[0]
        try:
            self._secret = resolve_secret(literal=self.key, env_var=self.key_env, file=self.key_file, env=env)
        except ValueError as exc:
            field = next(name for name, v in sources.items() if v is not None)
            raise _problems(((field,), str(exc))) from None
        return self

    @field_serializer("key", when_used="json")
    def _dump_key(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        return _reveal(value, info)


# ---- pools -------------------------------------------------------------------------------------------------


class ModelEntry(BaseModel):
    """A model name clients may use: `name` (served upstream as is) or `alias` (rewritten to `target`, default
    the pool's first named model). A bare string in `models:` is short for {name: ...}."""

    model_config = _STRICT

    name: str | None = Field(default=None, description="A model the upstreams serve under this name.")
    alias: str | None = Field(
        default=None, description="Another name for a model, rewritten before forwarding."
    )
    target: str | None = Field(
        default=None, description="The alias's upstream model (default: the first name)."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        if isinstance(data, str):
            return {"name": data}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"should be a model name or a mapping with name, or alias and target (got {_kind_of(data)})"
            )
        return data

    @field_validator("name", "alias", "target")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or value != value.strip() or not value.isprintable()):
            raise ValueError(f"must be a model name without surrounding spaces (got {value!r})")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.name is None) == (self.alias is None):
            raise _problems(((), "needs exactly one of name, alias"))
        if self.target is not None and self.alias is None:
            raise _problems((("target",), "target goes with alias only"))
        return self

    @property
    def public_name(self) -> str:
        """The name clients send."""
        name = self.name if self.name is not None else self.alias
        assert name is not None
        return name


def normalize_url(url: str) -> tuple[str, str]:
    """(normalised URL, derived endpoint name) for an upstream's base URL, or ValueError saying what is
    wrong. Lower-case scheme and host, no default port, no trailing slash, no trailing /v1 (the gateway adds
    /v1/... itself)."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"is not a valid URL (got {url!r})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not text.lower().startswith(f"{scheme}://"):
        raise ValueError(f"must be an http:// or https:// URL (got {url!r})")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); use api_key_env or api_key_file")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"has no host (got {url!r})")
    if parts.query or text.rstrip("/").endswith("?"):
        raise ValueError(f"must not carry a query string (got {url!r})")
    if parts.fragment or "#" in text:
        raise ValueError(f"must not carry a fragment (got {url!r})")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1").rstrip("/")
    if any(c.isspace() for c in path):
        raise ValueError(f"must not contain spaces (got {url!r})")
    default_port = 443 if scheme == "https" else 80
    shown_host = f"[{host}]" if ":" in host else host
    netloc = shown_host if port in (None, default_port) else f"{shown_host}:{port}"
    return f"{scheme}://{netloc}{path}", f"{shown_host}:{port or default_port}{path}"


class EndpointConfig(BaseModel):
    """A static upstream: an OpenAI-compatible server (vLLM, the simulator, a hosted endpoint). A bare URL
    string is short for {url: ...}."""

    model_config = _STRICT

    url: str = Field(description="Base URL, http(s), may carry a path prefix; the gateway appends /v1/....")
    name: str = Field(default="", description="Label in logs and metrics (default host:port/path).")
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="Relative share of traffic.")
    api_key_env: str | None = Field(default=None, description="Env var with the credential sent upstream.")
    api_key_file: str | None = Field(default=None, description="File with the credential sent upstream.")
    api_key: SecretStr | None = Field(default=None, description="The credential itself (discouraged).")
    kv_events: str | None = Field(
        default=None,
        description="ZMQ address of its KV-cache events (tcp://host:port), for precise prefix routing.",
    )

    _secret: SecretStr | None = PrivateAttr(default=None)

    @field_validator("kv_events")
    @classmethod
    def _kv_events(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"(tcp://[^\s:/]+:\d{1,5}|ipc://\S+)", value):
            raise ValueError(f"must be a ZMQ address like tcp://10.0.0.5:5557 (got {value!r})")
        return value

    @property
    def secret(self) -> SecretStr | None:
        """The credential sent upstream as `Authorization: Bearer ...`, None for none."""
        return self._secret

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        if isinstance(data, str):
            data = {"url": data}
        if not isinstance(data, Mapping):
            raise ValueError(f"should be a URL or a mapping with url (got {_kind_of(data)})")
        if data.get("name") is None and isinstance(data.get("url"), str):
            try:
                return {**data, "name": normalize_url(data["url"])[1]}
            except ValueError:
                pass  # the url's own validator says what is wrong
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return normalize_url(value)[0]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or not value.isprintable() or any(c.isspace() for c in value):
            raise ValueError(f"must be a non-empty name without spaces (got {value!r})")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return _env_var_name(value)

    @field_validator("api_key_file")
    @classmethod
    def _file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _absolute(value, info)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Self:
        sources = {
            "api_key_env": self.api_key_env,
            "api_key_file": self.api_key_file,
            "api_key": self.api_key,
        }
        problems = _secret_source_checks(sources, required=False)
        if problems:
            raise _problems(*problems)
        try:
            self._secret = resolve_secret(
                literal=self.api_key, env_var=self.api_key_env, file=self.api_key_file, env=_context(info)[0]
            )
        except ValueError as exc:
            field = next(name for name, v in sources.items() if v is not None)
            raise _problems(((field,), str(exc))) from None
        return self

    @field_serializer("api_key", when_used="json")
    def _dump_key(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        return _reveal(value, info)


class LimitsConfig(BaseModel):
    """Per-request and per-pool limits, checked before any byte goes upstream."""

    model_config = _STRICT

    max_tokens_default: int = Field(default=1024, ge=1, description="max_tokens when a request sets none.")
    max_tokens_cap: int = Field(default=8192, ge=1, description="Largest max_tokens accepted (400 above).")
    max_body_bytes: int = Field(default=4_194_304, ge=1, description="Largest request body (413 above).")
    max_queue: int = Field(
        default=1024, ge=1, description="Requests waiting in the pool's queue (429 above)."
    )
    max_queue_wait: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="Seconds a request may wait in the queue (503)."
    )

    @model_validator(mode="after")
    def _default_within_cap(self) -> Self:
        if self.max_tokens_default > self.max_tokens_cap:
            raise _problems(
                (
                    ("max_tokens_default",),
                    f"must not exceed max_tokens_cap ({self.max_tokens_default} > {self.max_tokens_cap})",
                )
            )
        return self


def _seconds(default: float, description: str) -> Any:
    return Field(default=default, gt=0, allow_inf_nan=False, description=description)


class TimeoutsConfig(BaseModel):
    """Seconds the relay waits on an upstream; all positive."""

    model_config = _STRICT

    connect: float = _seconds(2.0, "Opening a connection to an upstream.")
    first_byte_stream: float = _seconds(30.0, "A streaming request's first byte from the upstream.")
    first_byte_nonstream: float = _seconds(300.0, "A non-streaming request's response.")
    idle_gap: float = _seconds(60.0, "Longest silence between bytes of a stream.")
    total: float = _seconds(900.0, "A whole request, first attempt to last byte.")


class RetriesConfig(BaseModel):
    """Retries before the upstream's first byte (connect errors, 429, 502, 503, 504), each on another endpoint
    where one is free; jittered exponential backoff between attempts."""

    model_config = _STRICT

    attempts: int = Field(default=3, ge=1, description="Tries in all, the first included; 1 = no retry.")
    backoff_base: float = Field(default=0.05, ge=0, allow_inf_nan=False, description="First backoff, s.")
    backoff_max: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="Longest backoff, s.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.backoff_base > self.backoff_max:
            raise _problems((("backoff_base",), "must not exceed backoff_max"))
        return self


class HealthConfig(BaseModel):
    """Active health checks: GET <url><path> on every endpoint."""

    model_config = _STRICT

    interval: float = _seconds(1.0, "Seconds between checks of one endpoint.")
    timeout: float = _seconds(2.0, "Seconds a check may take before it counts as failed.")
    path: str = Field(default="/health", description="Path appended to the endpoint URL.")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError(f"must start with / and contain no spaces (got {value!r})")
        return value


class ScrapeConfig(BaseModel):
    """Reading each endpoint's /metrics (vLLM's Prometheus text) for load-aware routing."""

    model_config = _STRICT

    interval: float = _seconds(0.1, "Seconds between scrapes of one endpoint.")
    stale_after: float = _seconds(1.0, "Seconds after which an endpoint's figures are not trusted.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.stale_after < self.interval:
            raise _problems((("stale_after",), "must be at least interval"))
        return self


class SaturationConfig(BaseModel):
    """When an endpoint counts as full. Saturated endpoints are skipped while others are not; when all are,
    the pool's queue holds requests (priorities first, sheddable ones refused)."""

    model_config = _STRICT

    max_waiting: float = Field(
        default=5, gt=0, allow_inf_nan=False, description="Requests waiting in vLLM's queue (ours included)."
    )
    max_kv_usage: float = Field(default=0.8, gt=0, le=1, description="vLLM's KV-cache use, 0 to 1.")


class SessionConfig(BaseModel):
    """Session affinity: a conversation goes back to the endpoint that holds its history."""

    model_config = _STRICT

    header: str = Field(default="x-session-id", min_length=1, description="Header naming a session.")
    ttl: float = _seconds(600.0, "Seconds a session stays bound after its last request.")

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]+", value):
            raise ValueError(f"must be an HTTP header name (got {value!r})")
        return value.lower()


class RoutingConfig(BaseModel):
    """How the picker ranks a pool's endpoints: a weighted sum of scorers. Listing scorers replaces the
    default set: a scorer not listed is off."""

    model_config = _STRICT

    scorers: dict[str, float] = Field(
        default_factory=lambda: dict(SCORERS), description="Scorer name -> weight (>= 0)."
    )
    picker: Literal["max", "weighted_random", "round_robin"] = Field(
        default="max", description="max | weighted_random | round_robin (ignores scorers)."
    )
    tokenizer: str = Field(
        default="none",
        description="How prompts become block keys: none (text) | builtin (the simulator's) | a model's "
        "directory or hub id (its own tokenizer and chat template; needs the [embedded] extra).",
    )
    block_size: int = Field(default=16, ge=1, le=1024, description="Tokens per KV block (vLLM's).")
    index_blocks: int = Field(
        default=65536, ge=1, description="Blocks remembered per endpoint until vLLM reports its capacity."
    )
    kv_events_topic: str = Field(default="", description="ZMQ topic of KV-cache events ('' = all).")
    kv_events_silence: float = _seconds(10.0, "Seconds without events after a request: index cleared.")
    saturation: SaturationConfig = Field(default_factory=SaturationConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    prefill_tokens_per_request: int = Field(
        default=2048, ge=1, description="Pending prompt tokens that weigh like one queued request."
    )
    debug_headers: bool = Field(
        default=False, description="Add x-fleetgate-endpoint/-route/-prefix-hit to responses."
    )

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"must be none, builtin, or a model directory or hub id (got {value!r})")
        return value

    @field_validator("scorers")
    @classmethod
    def _known(cls, scorers: dict[str, float]) -> dict[str, float]:
        problems: list[tuple[Loc, str]] = []
        for name, weight in scorers.items():
            if name not in SCORERS:
                problems.append(((name,), f"unknown scorer (known: {', '.join(SCORERS)})"))
            elif not (weight >= 0 and weight != float("inf")):
                problems.append(((name,), f"weight must be a finite number >= 0 (got {weight})"))
        if problems:
            raise _problems(*problems)
        return scorers


class AdapterConfig(BaseModel):
    """A LoRA adapter the gateway may load onto an endpoint when a request asks for it."""

    model_config = _STRICT

    name: str = Field(description="The adapter's model name in requests.")
    path: str = Field(min_length=1, description="Where the engine finds it (lora_path of vLLM's load API).")

    _name = field_validator("name")(_check_name)


class ScalingConfig(BaseModel):
    """How many workers a pool wants from its load (docs/scaling.md has the arithmetic)."""

    model_config = _STRICT

    rule: Literal["queue_delay", "request_count", "concurrency"] = Field(
        default="queue_delay",
        description="queue_delay (a request waited > target s) | request_count | concurrency (per worker).",
    )
    target: float = _seconds(2.0, "The rule's target: seconds, requests per worker or streams per worker.")
    interval: float = _seconds(1.0, "Seconds between autoscaler ticks (a held request ticks it at once).")


class WorkersConfig(BaseModel):
    """Workers fleetgate starts itself (child processes on 127.0.0.1) instead of fixed endpoints."""

    model_config = _STRICT

    engine: Literal["vllm", "embedded", "sim"] = Field(description="vllm | embedded | sim.")
    model: str = Field(
        min_length=1, description="Hub id or directory; `demo` (embedded); a simulator profile (sim)."
    )
    served_model_name: str | None = Field(default=None, description="Name the workers serve (default model).")
    engine_args: list[str] = Field(default_factory=list, description="Extra flags for the engine.")
    gpus: list[str] | None = Field(
        default=None, description="GPUs this pool may use (default CUDA_VISIBLE_DEVICES, then NVML's)."
    )
    gpus_per_worker: int | None = Field(
        default=None, ge=0, description="GPUs each worker takes (default 1 for vllm, else 0)."
    )
    min_workers: int = Field(default=0, ge=0, description="Workers kept even when idle; 0 = scale to zero.")
    max_workers: int = Field(default=1, ge=1, description="Most worker processes (sleeping ones count).")
    idle_timeout: float = _seconds(300.0, "Seconds without requests before the last idle worker goes.")
    sleep: bool = Field(default=False, description="Scale down by sleeping (vLLM sleep mode), not stopping.")
    sleep_level: Literal[1, 2] = Field(default=1, description="1 offloads weights to CPU; 2 discards them.")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    stabilization_window: float = Field(
        default=30.0, ge=0, allow_inf_nan=False, description="Seconds of low load before scaling down."
    )
    scale_up_limit: int = Field(default=4, ge=1, description="Workers started or woken per scale_up_period.")
    scale_up_period: float = _seconds(10.0, "The window scale_up_limit counts over, s.")
    backoff_base: float = _seconds(1.0, "First restart delay after a crash, s; doubles per failure.")
    backoff_cap: float = _seconds(60.0, "Longest restart delay, s.")
    max_failures: int = Field(default=5, ge=1, description="Failures in a row that mark the pool failed.")
    startup_timeout: float = _seconds(
        1800.0, "Seconds a worker may take to become ready (download included)."
    )
    drain_deadline: float = Field(
        default=60.0, ge=0, allow_inf_nan=False, description="Seconds in-flight streams get before a stop."
    )
    stop_grace: float = _seconds(10.0, "Seconds from SIGTERM to SIGKILL.")
    hf_token_env: str | None = Field(default=None, description="Env var holding the Hugging Face token.")
    hf_token_file: str | None = Field(default=None, description="File holding it (relative to the file).")
    offline: bool = Field(default=False, description="HF_HUB_OFFLINE=1: weights must already be cached.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the workers.")
    log_dir: str = Field(
        default="fleetgate-logs", min_length=1, description="Folder of worker logs (relative to the file)."
    )

    @field_validator("hf_token_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return _env_var_name(value)

    @field_validator("hf_token_file", "log_dir")
    @classmethod
    def _file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _absolute(value, info)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [((name,), "must be an environment variable name") for name in value if _bad_env_name(name)]
        if bad:
            raise _problems(*bad)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if self.min_workers > self.max_workers:
            problems.append((("min_workers",), f"must not exceed max_workers ({self.max_workers})"))
        if self.backoff_base > self.backoff_cap:
            problems.append((("backoff_base",), "must not exceed backoff_cap"))
        if self.sleep and self.engine == "embedded":
            problems.append((("sleep",), "the embedded engine has no sleep mode (vllm and sim have)"))
        if self.hf_token_env is not None and self.hf_token_file is not None:
            problems.append((("hf_token_file",), "give only one of hf_token_env, hf_token_file"))
        if self.gpus is not None and len(set(self.gpus)) != len(self.gpus):
            problems.append((("gpus",), "names a GPU twice"))
        if self.gpus is not None and self.worker_gpus * self.max_workers > len(self.gpus):
            problems.append(
                (
                    ("max_workers",),
                    f"{self.max_workers} workers of {self.worker_gpus} GPU(s) need more "
                    f"than the {len(self.gpus)} listed in gpus",
                )
            )
        if problems:
            raise _problems(*problems)
        return self

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def worker_gpus(self) -> int:
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1 if self.engine == "vllm" else 0


def _bad_env_name(name: str) -> bool:
    return not _ENV_NAME_RE.fullmatch(name)


class PoolConfig(BaseModel):
    """A set of interchangeable upstreams serving the same models, with one queue and one routing policy."""

    model_config = _STRICT

    name: str = Field(description="The pool's name (logs, metrics, admin API).")
    models: list[ModelEntry] = Field(
        default_factory=list,
        description="Names clients may use; empty = what the upstreams' /v1/models list.",
    )
    endpoints: list[EndpointConfig] = Field(default_factory=list, description="Static upstreams.")
    workers: WorkersConfig | None = Field(
        default=None, description="Workers fleetgate starts itself (instead of endpoints)."
    )
    priority_header: bool = Field(default=False, description="Honour x-fleetgate-priority from clients.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    adapters: list[AdapterConfig] = Field(
        default_factory=list, description="LoRA adapters loaded on demand (vLLM runtime LoRA updating)."
    )

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if not self.endpoints and self.workers is None:
            problems.append(
                (("endpoints",), "a pool needs at least one endpoint, or workers that fleetgate starts")
            )
        if self.endpoints and self.workers is not None:
            problems.append((("workers",), "give either endpoints or workers, not both"))
        seen: dict[str, int] = {}
        for i, ep in enumerate(self.endpoints):
            for field, value in (("url", ep.url), ("name", ep.name)):
                key = f"{field}:{value}"
                if key in seen:
                    problems.append(
                        (
                            ("endpoints", i, field),
                            f"endpoint {field} {value!r} repeats endpoints[{seen[key]}]",
                        )
                    )
                seen.setdefault(key, i)
        if any(m.alias is not None and m.target is None for m in self.models) and self._first_name() is None:
            i = next(i for i, m in enumerate(self.models) if m.alias is not None and m.target is None)
            problems.append(
                (("models", i), "an alias without target needs a named model in the pool to stand for")
            )
        if problems:
            raise _problems(*problems)
        return self

    def _first_name(self) -> str | None:
        named = next((m.name for m in self.models if m.name is not None), None)
        return named if named is not None or self.workers is None else self.workers.served_name

    def model_map(self) -> dict[str, str]:
        """Public model name -> the name sent upstream, for the names this pool lists (a pool of workers
        always serves its workers' name)."""
        first = self._first_name()
        out: dict[str, str] = {}
        if self.workers is not None:
            out[self.workers.served_name] = self.workers.served_name
        for m in self.models:
            upstream = m.name if m.name is not None else (m.target or first)
            assert upstream is not None
            out[m.public_name] = upstream
        return out


# ---- the fleet file ----------------------------------------------------------------------------------------


class FleetConfig(BaseModel):
    """The whole fleet file."""

    model_config = _STRICT

    listen: ListenConfig = Field(default_factory=ListenConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    keys: list[KeyConfig] = Field(default_factory=list, description="API keys; absent = open gateway.")
    pools: list[PoolConfig] = Field(description="At least one pool.")
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    keepalive_after: float = _seconds(10.0, "Seconds a request waits before SSE keep-alive comments start.")
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("keys", mode="before")
    @classmethod
    def _keys_given(cls, value: object) -> object:
        if value is None:  # `keys:` with nothing under it reads as absent
            return []
        if isinstance(value, list) and not value:
            raise ValueError(
                "an empty keys list would refuse every request; remove keys: for an open gateway"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = [*self._pool_problems(), *self._key_problems()]
        clash = _address_clash(self.listen, self.admin)
        if clash:
            problems.append((("admin", "port"), clash))
        if problems:
            raise _problems(*problems)
        return self

    def with_addresses(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        admin_host: str | None = None,
        admin_port: int | None = None,
    ) -> FleetConfig:
        """A copy listening elsewhere (command-line overrides: --host, --port, --admin-host, --admin-port);
        None keeps the current value. Raises ConfigError naming the flag."""
        listen = self.listen.model_dump()
        admin = self.admin.model_dump()
        listen.update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
        admin.update({k: v for k, v in (("host", admin_host), ("port", admin_port)) if v is not None})
        problems: list[Problem] = []
        try:
            new_listen = ListenConfig.model_validate(listen)
            new_admin = AdminConfig.model_validate(admin)
        except ValidationError as exc:
            prefix = "--" if exc.title == ListenConfig.__name__ else "--admin-"
            for err in exc.errors(include_url=False):
                for loc, message in _explain(err):
                    problems.append(Problem("<command line>", 0, 0, f"{prefix}{loc[0]}", message))
            raise ConfigError(problems) from None
        clash = _address_clash(new_listen, new_admin)
        if clash:
            raise ConfigError([Problem("<command line>", 0, 0, "--admin-port", clash)])
        return self.model_copy(update={"listen": new_listen, "admin": new_admin})

    def _pool_problems(self) -> Iterator[tuple[Loc, str]]:
        if not self.pools:
            yield ("pools",), "at least one pool is required"
        pool_at: dict[str, int] = {}
        model_at: dict[str, tuple[int, int]] = {}
        for p, pool in enumerate(self.pools):
            if pool.name in pool_at:
                yield ("pools", p, "name"), f"pool name {pool.name!r} repeats pools[{pool_at[pool.name]}]"
            pool_at.setdefault(pool.name, p)
            for m, entry in enumerate(pool.models):
                name = entry.public_name
                if name in model_at:
                    q, n = model_at[name]
                    where = (
                        f"twice in pool {pool.name!r}"
                        if q == p
                        else f"in pools {self.pools[q].name!r} and {pool.name!r}"
                    )
                    yield (
                        ("pools", p, "models", m),
                        f"model name {name!r} appears {where} (first at pools[{q}].models[{n}]); "
                        "a name may be served by one pool only",
                    )
                model_at.setdefault(name, (p, m))

    def _key_problems(self) -> Iterator[tuple[Loc, str]]:
        name_at: dict[str, int] = {}
        secret_at: dict[str, int] = {}
        for k, key in enumerate(self.keys):
            if key.name in name_at:
                yield ("keys", k, "name"), f"key name {key.name!r} repeats keys[{name_at[key.name]}]"
            name_at.setdefault(key.name, k)
            value = key.secret.get_secret_value()
            if value in secret_at:
                first = secret_at[value]
                yield (
                    ("keys", k),
                    f"resolves to the same secret as keys[{first}] ({self.keys[first].name!r}); "
                    "every key must be distinct",
                )
            secret_at.setdefault(value, k)

    def pool_for_model(self) -> dict[str, tuple[PoolConfig, str]]:
        """Public model or alias name -> (its pool, the model name sent upstream). Pools that list no models
        (discovery) are absent: their names come from the upstreams at run time."""
        return {name: (pool, upstream) for pool in self.pools for name, upstream in pool.model_map().items()}


def _address_clash(listen: ListenConfig, admin: AdminConfig) -> str | None:
    lh, lp, ah, ap = listen.host, listen.port, admin.host, admin.port
    if lp == ap and lp != 0 and (lh == ah or lh in _WILDCARD_HOSTS or ah in _WILDCARD_HOSTS):
        return f"admin must not listen where listen does ({lh}:{lp} and {ah}:{ap})"
    return None


# ---- environment settings ----------------------------------------------------------------------------------


def config_path(cli_value: str | None, env: Mapping[str, str], *, cwd: Path | None = None) -> Path | None:
    """Which fleet file to load, highest precedence first: the --config flag, then $FLEETGATE_CONFIG, then
    ./fleet.yaml when it exists; None = no file (the gateway then needs --upstream). Empty values count as
    unset."""
    if cli_value:
        return Path(cli_value)
    if env.get(CONFIG_ENV_VAR):
        return Path(env[CONFIG_ENV_VAR])
    default = (cwd or Path.cwd()) / DEFAULT_CONFIG_FILE
    return default if default.is_file() else None


# ---- loading -----------------------------------------------------------------------------------------------


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> FleetConfig:
    """Reads and validates a fleet file. `env` (default os.environ) supplies key_env/api_key_env secrets;
    key_file paths are relative to the file's folder. Raises ConfigError listing every problem found, each at
    its file:line:column; warns (ConfigWarning) about secrets written into the file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError([Problem(str(file), 0, 0, "(file)", f"cannot read: {why}")]) from None
    return parse_config(text, source=str(file), env=env, base_dir=file.parent.absolute())


def parse_config(
    text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> FleetConfig:
    """load_config on YAML text; `source` names it in errors, `base_dir` anchors relative key files (cwd)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or "syntax error"
        if exc.context:
            problem += f" ({exc.context})"
        raise ConfigError([Problem(source, line, col, "(yaml)", f"not valid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(source, 1, 1, "(yaml)", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if root is None:
        raise ConfigError(
            [Problem(source, 1, 1, "(top level)", "the file is empty; a fleet file needs pools:")]
        )
    problems = _duplicate_keys(root, source)
    context = {"env": os.environ if env is None else env, "base_dir": base_dir or Path.cwd()}
    try:
        config = FleetConfig.model_validate(data, context=context)
    except ValidationError as exc:
        problems += [
            _place(source, root, loc, message)
            for err in exc.errors(include_url=False)
            for loc, message in _explain(err)
        ]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    for loc in _literal_secrets(config):
        warning = _place(
            source, root, loc, "a secret written in the fleet file; prefer the _env or _file form"
        )
        warnings.warn(str(warning), ConfigWarning, stacklevel=2)
    return config


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
) -> FleetConfig:
    """The one-liner (`fleetgate serve MODEL`): one pool "default" of started workers; everything else
    default. Raises ConfigError naming the flag."""
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
    return _from_command_line(data)


def _from_command_line(data: dict[str, Any]) -> FleetConfig:
    """Validate a config built from flags; problems name the flag, not a file position."""
    try:
        return FleetConfig.model_validate(data, context={"env": os.environ})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            for loc, message in _explain(err):
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
        case ("listen", field, *_):
            return f"--{field}"
        case _:
            return _render_loc(loc) or "(top level)"


def dump_config(config: FleetConfig, *, reveal_secrets: bool = False) -> str:
    """The effective fleet file as YAML, every default spelled out. Secrets written in the file print as
    ********** unless reveal_secrets; secrets read from env vars or files never appear (their sources do)."""
    data = config.model_dump(mode="json", exclude_none=True, context={"reveal_secrets": reveal_secrets})
    if not data["keys"]:
        del data["keys"]  # an open gateway; `keys: []` would not load
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _literal_secrets(config: FleetConfig) -> Iterator[Loc]:
    for k, key in enumerate(config.keys):
        if key.key is not None:
            yield ("keys", k, "key")
    for p, pool in enumerate(config.pools):
        for e, ep in enumerate(pool.endpoints):
            if ep.api_key is not None:
                yield ("pools", p, "endpoints", e, "api_key")


# ---- pydantic errors -> problems at YAML positions ---------------------------------------------------------

_RENAMED = {"auth": "keys", "api_keys": "keys", "upstreams": "endpoints", "backends": "endpoints"}


def _explain(err: Any) -> Iterator[tuple[Loc, str]]:
    """(absolute loc, message) for each problem one pydantic error stands for."""
    loc: Loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == "fleetgate":
        for sub, message in ctx["problems"]:
            yield (*loc, *sub), message
        return
    message = str(err["msg"]).removeprefix("Value error, ")
    kind = err["type"]
    value = err.get("input")
    # Nothing under keys: nor in an api_key is ever echoed: a misplaced secret must not reach a log.
    secret = loc[:1] == ("keys",) or any(seg in _SECRET_FIELDS for seg in loc)
    if kind == "missing":
        message = "required key is missing"
    elif kind == "extra_forbidden":
        message = "unknown key" + _key_hint(loc)
    elif kind in ("model_type", "dict_type", "model_attributes_type", "list_type"):
        shape = "a list" if kind == "list_type" else "a mapping"
        message = f"should be {shape}" + ("" if secret else f" (got {_kind_of(value)})")
    elif kind != "value_error":  # our own messages say what they were given, where that is safe
        for noun in ("Input", "String", "List", "Value"):
            message = message.replace(f"{noun} should", "should")
        if not secret and ", got " not in message and isinstance(value, str | int | float | bool):
            message += f" (got {value!r})"
    yield loc, message


def _kind_of(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _key_hint(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    known = list(model.model_fields)
    wrong = str(loc[-1])
    close = [_RENAMED[wrong]] if wrong in _RENAMED else difflib.get_close_matches(wrong, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (expected one of: {', '.join(known)})"


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class validating the mapping at `loc`, following field annotations."""
    tp: Any = FleetConfig
    for seg in loc:
        if isinstance(seg, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(seg)
            if field is None:
                return None
            tp = _unwrap(field.annotation)
        elif isinstance(seg, int) and typing.get_origin(tp) is list:
            tp = _unwrap(typing.get_args(tp)[0])
        else:
            return None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else tp
    return tp


def _place(source: str, root: yaml.Node, loc: Loc, message: str) -> Problem:
    """The problem at the YAML node `loc` names: the value for a key that is there, the key itself for an
    unknown key, the enclosing mapping for a key that is missing."""
    node: yaml.Node = root
    point_at_key = message.startswith("unknown ")  # an unknown key, an unknown scorer
    for i, seg in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            pair = next(
                ((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(seg)),
                None,
            )
            if pair is None:
                break
            node = pair[0] if point_at_key and i == len(loc) - 1 else pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(seg, int) and 0 <= seg < len(node.value):
            node = node.value[seg]
        else:
            break
    mark = node.start_mark
    return Problem(source, mark.line + 1, mark.column + 1, _render_loc(loc) or "(top level)", message)


def _duplicate_keys(root: yaml.Node, source: str) -> list[Problem]:
    """YAML lets a key repeat (the last wins); in a fleet file that is always a mistake."""
    problems: list[Problem] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node, loc: Loc) -> None:
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):
                    continue
                if k.value in first:
                    line = first[k.value].start_mark.line + 1
                    problems.append(
                        Problem(
                            source,
                            k.start_mark.line + 1,
                            k.start_mark.column + 1,
                            _render_loc((*loc, k.value)),
                            f"duplicate key (first at line {line}); the last one would silently win",
                        )
                    )
                first.setdefault(k.value, k)
                walk(v, (*loc, k.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    walk(root, ())
    return problems
