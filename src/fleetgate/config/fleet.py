"""The whole fleet file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Self

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from fleetgate.config.fields import STRICT, seconds
from fleetgate.config.kubernetes import KubernetesConfig
from fleetgate.config.pool import PoolConfig
from fleetgate.config.problems import ConfigError, Loc, Problem, explain, invalid
from fleetgate.config.server import AdminConfig, KeyConfig, ListenConfig, LogConfig, ShutdownConfig
from fleetgate.config.tenancy import TenancyConfig

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


class FleetConfig(BaseModel):
    """The whole fleet file."""

    model_config = STRICT

    listen: ListenConfig = Field(default_factory=ListenConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    keys: list[KeyConfig] = Field(default_factory=list, description="API keys; absent = open gateway.")
    pools: list[PoolConfig] = Field(description="At least one pool.")
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    keepalive_after: float = seconds(10.0, "Seconds a request waits before SSE keep-alive comments start.")
    log: LogConfig = Field(default_factory=LogConfig)
    tenancy: TenancyConfig = Field(default_factory=TenancyConfig)
    kubernetes: KubernetesConfig = Field(
        default_factory=KubernetesConfig, description="The API server, for pools with Kubernetes discovery."
    )

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
        problems = [*self._poolinvalid(), *self._keyinvalid()]
        clash = address_clash(self.listen, self.admin)
        if clash:
            problems.append((("admin", "port"), clash))
        if problems:
            raise invalid(*problems)
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
            model = ListenConfig if exc.title == ListenConfig.__name__ else AdminConfig
            prefix = "--" if model is ListenConfig else "--admin-"
            for err in exc.errors(include_url=False):
                for loc, message in explain(err, model):
                    problems.append(Problem("<command line>", 0, 0, f"{prefix}{loc[0]}", message))
            raise ConfigError(problems) from None
        clash = address_clash(new_listen, new_admin)
        if clash:
            raise ConfigError([Problem("<command line>", 0, 0, "--admin-port", clash)])
        return self.model_copy(update={"listen": new_listen, "admin": new_admin})

    def _poolinvalid(self) -> Iterator[tuple[Loc, str]]:
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

    def _keyinvalid(self) -> Iterator[tuple[Loc, str]]:
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


def address_clash(listen: ListenConfig, admin: AdminConfig) -> str | None:
    lh, lp, ah, ap = listen.host, listen.port, admin.host, admin.port
    if lp == ap and lp != 0 and (lh == ah or lh in WILDCARD_HOSTS or ah in WILDCARD_HOSTS):
        return f"admin must not listen where listen does ({lh}:{lp} and {ah}:{ap})"
    return None
