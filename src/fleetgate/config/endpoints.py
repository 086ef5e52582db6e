"""Where a pool's requests go: model names clients may use, and static upstreams."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    SerializationInfo,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from fleetgate.config.fields import STRICT, absolute_path, context_of, env_var_name
from fleetgate.config.problems import invalid, kind_of
from fleetgate.config.secrets import resolve_secret, reveal, secret_source_checks


class ModelEntry(BaseModel):
    """A model name clients may use: `name` (served upstream as is) or `alias` (rewritten to `target`, default
    the pool's first named model). A bare string in `models:` is short for {name: ...}."""

    model_config = STRICT

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
                f"should be a model name or a mapping with name, or alias and target (got {kind_of(data)})"
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
            raise invalid(((), "needs exactly one of name, alias"))
        if self.target is not None and self.alias is None:
            raise invalid((("target",), "target goes with alias only"))
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

    model_config = STRICT

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
            raise ValueError(f"should be a URL or a mapping with url (got {kind_of(data)})")
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
        return env_var_name(value)

    @field_validator("api_key_file")
    @classmethod
    def _file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return absolute_path(value, info)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Self:
        sources = {
            "api_key_env": self.api_key_env,
            "api_key_file": self.api_key_file,
            "api_key": self.api_key,
        }
        problems = secret_source_checks(sources, required=False)
        if problems:
            raise invalid(*problems)
        try:
            self._secret = resolve_secret(
                literal=self.api_key,
                env_var=self.api_key_env,
                file=self.api_key_file,
                env=context_of(info)[0],
            )
        except ValueError as exc:
            field = next(name for name, v in sources.items() if v is not None)
            raise invalid(((field,), str(exc))) from None
        return self

    @field_serializer("api_key", when_used="json")
    def _dump_key(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        return reveal(value, info)
