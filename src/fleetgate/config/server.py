"""Process-wide settings: where the gateway and its admin API listen, shutdown, logs, API keys."""

from __future__ import annotations

from typing import Literal, Self

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

from fleetgate.config.fields import STRICT, absolute_path, check_name, context_of, env_var_name, seconds
from fleetgate.config.problems import invalid
from fleetgate.config.secrets import resolve_secret, reveal, secret_source_checks


class ListenConfig(BaseModel):
    """Where the OpenAI API (/v1/*) and /health, /ready listen. Port 0 = any free port."""

    model_config = STRICT

    host: str = Field(default="0.0.0.0", min_length=1, description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port; 0 = any free port.")
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description="Open client connections (503 and closed above); default: half the open-file limit "
        "left after a reserve for the admin port and upstream connections.",
    )
    max_header_bytes: int = Field(
        default=32768, ge=1024, description="Largest request line and headers together (431 above)."
    )
    header_timeout: float = seconds(10.0, "Seconds a request's headers may take to arrive (408 after).")
    body_timeout: float = seconds(60.0, "Seconds a request's body may take after its headers (408 after).")
    idle_timeout: float = seconds(5.0, "Seconds an idle kept-alive connection stays open.")


class AdminConfig(BaseModel):
    """Where /admin/* and /metrics listen: never tenant-facing, loopback by default."""

    model_config = STRICT

    host: str = Field(default="127.0.0.1", min_length=1, description="Address to bind.")
    port: int = Field(default=8001, ge=0, le=65535, description="TCP port; 0 = any free port.")


class ShutdownConfig(BaseModel):
    """On SIGTERM: /ready fails at once, serving continues `pre_stop_delay` s, then streams drain."""

    model_config = STRICT

    pre_stop_delay: float = Field(
        default=5.0, ge=0, allow_inf_nan=False, description="Seconds still serving after /ready fails."
    )
    drain_timeout: float = Field(
        default=30.0, ge=0, allow_inf_nan=False, description="Seconds in-flight requests may take to finish."
    )


class LogConfig(BaseModel):
    """The gateway's own log lines."""

    model_config = STRICT

    format: Literal["json", "text"] = Field(default="text", description="json (one object per line) | text.")
    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Lowest level.")

    @field_validator("format", "level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class KeyConfig(BaseModel):
    """A tenant's API key: clients send it as `Authorization: Bearer <key>`. Exactly one of key_env, key_file,
    key (a literal in the file: discouraged, load_config warns). The secret is read at load time."""

    model_config = STRICT

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

    _name = field_validator("name")(check_name)

    @field_validator("key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return env_var_name(value)

    @field_validator("key_file")
    @classmethod
    def _file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return absolute_path(value, info)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Self:
        sources = {"key_env": self.key_env, "key_file": self.key_file, "key": self.key}
        problems = secret_source_checks(sources, required=True)
        if problems:
            raise invalid(*problems)
        env = context_of(info)[0]
        try:
            self._secret = resolve_secret(literal=self.key, env_var=self.key_env, file=self.key_file, env=env)
        except ValueError as exc:
            field = next(name for name, v in sources.items() if v is not None)
            raise invalid(((field,), str(exc))) from None
        return self

    @field_serializer("key", when_used="json")
    def _dump_key(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        return reveal(value, info)
