"""A pool: interchangeable upstreams or workers serving the same models, with their limits, timeouts,
retries, health checks, scrapes, routing and adapters."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from fleetgate.config.endpoints import EndpointConfig, ModelEntry
from fleetgate.config.fields import STRICT, check_name, seconds
from fleetgate.config.kubernetes import DiscoveryConfig
from fleetgate.config.problems import Loc, invalid
from fleetgate.config.routing import RoutingConfig
from fleetgate.config.workers import WorkersConfig


class LimitsConfig(BaseModel):
    """Per-request and per-pool limits, checked before any byte goes upstream."""

    model_config = STRICT

    max_tokens_default: int = Field(default=1024, ge=1, description="max_tokens when a request sets none.")
    max_tokens_cap: int = Field(default=8192, ge=1, description="Largest max_tokens accepted (400 above).")
    max_body_bytes: int = Field(default=4_194_304, ge=1, description="Largest request body (413 above).")
    max_n: int = Field(
        default=16, ge=1, description="Most choices (`n`) one request may ask for (400 above)."
    )
    max_queue: int = Field(
        default=1024, ge=1, description="Requests waiting in the pool's queue (429 above)."
    )
    max_queue_wait: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="Seconds a request may wait in the queue (503)."
    )

    @model_validator(mode="after")
    def _default_within_cap(self) -> Self:
        if self.max_tokens_default > self.max_tokens_cap:
            raise invalid(
                (
                    ("max_tokens_default",),
                    f"must not exceed max_tokens_cap ({self.max_tokens_default} > {self.max_tokens_cap})",
                )
            )
        return self


class TimeoutsConfig(BaseModel):
    """Seconds the relay waits on an upstream; all positive."""

    model_config = STRICT

    connect: float = seconds(2.0, "Opening a connection to an upstream.")
    first_byte_stream: float = seconds(30.0, "A streaming request's first byte from the upstream.")
    first_byte_nonstream: float = seconds(300.0, "A non-streaming request's response.")
    idle_gap: float = seconds(60.0, "Longest silence between bytes of a stream.")
    total: float = seconds(900.0, "A whole request, first attempt to last byte.")
    stall_after: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="An endpoint with no probe, scrape or response byte answered this long counts as frozen: "
        "it gets no new requests, and requests still waiting there for a first byte are retried elsewhere "
        "(default: 5 s, or more when health checks are slower). Raise it for upstreams that go quiet while "
        "they cold-start (a RunPod or Cloud Run URL).",
    )


class RetriesConfig(BaseModel):
    """Retries before the upstream's first byte (connect errors, 429, 502, 503, 504), each on another endpoint
    where one is free; jittered exponential backoff between attempts."""

    model_config = STRICT

    attempts: int = Field(default=3, ge=1, description="Tries in all, the first included; 1 = no retry.")
    backoff_base: float = Field(default=0.05, ge=0, allow_inf_nan=False, description="First backoff, s.")
    backoff_max: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="Longest backoff, s.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.backoff_base > self.backoff_max:
            raise invalid((("backoff_base",), "must not exceed backoff_max"))
        return self


class HealthConfig(BaseModel):
    """Active health checks: GET <url><path> on every endpoint."""

    model_config = STRICT

    interval: float = seconds(1.0, "Seconds between checks of one endpoint.")
    timeout: float = seconds(2.0, "Seconds a check may take before it counts as failed.")
    path: str = Field(default="/health", description="Path appended to the endpoint URL.")
    discovery_interval: float = seconds(
        5.0, "Seconds between reads of /v1/models (models and LoRA adapters) on a healthy endpoint."
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError(f"must start with / and contain no spaces (got {value!r})")
        return value


class ScrapeConfig(BaseModel):
    """Reading each endpoint's /metrics (vLLM's Prometheus text) for load-aware routing."""

    model_config = STRICT

    interval: float = seconds(0.1, "Seconds between scrapes of one endpoint.")
    stale_after: float = seconds(1.0, "Seconds after which an endpoint's figures are not trusted.")
    timeout: float = seconds(1.0, "Seconds one scrape may take.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.stale_after < self.interval:
            raise invalid((("stale_after",), "must be at least interval"))
        return self


class AdapterConfig(BaseModel):
    """A LoRA adapter the gateway may load onto an endpoint when a request asks for it."""

    model_config = STRICT

    name: str = Field(description="The adapter's model name in requests.")
    path: str = Field(min_length=1, description="Where the engine finds it (lora_path of vLLM's load API).")

    _name = field_validator("name")(check_name)


class PoolConfig(BaseModel):
    """A set of interchangeable upstreams serving the same models, with one queue and one routing policy."""

    model_config = STRICT

    name: str = Field(description="The pool's name (logs, metrics, admin API).")
    models: list[ModelEntry] = Field(
        default_factory=list,
        description="Names clients may use; empty = what the upstreams' /v1/models list.",
    )
    endpoints: list[EndpointConfig] = Field(default_factory=list, description="Static upstreams.")
    workers: WorkersConfig | None = Field(
        default=None, description="Workers fleetgate starts itself (instead of endpoints)."
    )
    discovery: DiscoveryConfig | None = Field(
        default=None, description="Endpoints found at run time (Kubernetes) instead of a fixed list."
    )
    priority_header: bool = Field(default=False, description="Honour x-fleetgate-priority from clients.")
    anthropic: Literal["translate", "passthrough"] = Field(
        default="translate",
        description="How Anthropic's /v1/messages and count_tokens reach the upstreams: translate (to chat "
        "completions and /tokenize: any upstream) | passthrough (to their own routes, as vLLM serves them).",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    adapters: list[AdapterConfig] = Field(
        default_factory=list, description="LoRA adapters loaded on demand (vLLM runtime LoRA updating)."
    )

    _name = field_validator("name")(check_name)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if not self.endpoints and self.workers is None and self.discovery is None:
            problems.append(
                (
                    ("endpoints",),
                    "a pool needs at least one endpoint, workers that fleetgate starts, or discovery",
                )
            )
        if self.endpoints and self.workers is not None:
            problems.append((("workers",), "give either endpoints or workers, not both"))
        if self.endpoints and self.discovery is not None:
            problems.append((("discovery",), "give either endpoints or discovery, not both"))
        problems.extend(self._kubernetes_problems())
        if self.anthropic == "passthrough" and self.workers is not None and self.workers.engine == "embedded":
            problems.append(
                (
                    ("anthropic",),
                    "the embedded engine does not serve /v1/messages: use anthropic: translate (the default)",
                )
            )
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
        slowest_probe = self.health.interval + self.health.timeout
        if self.timeouts.stall_after is not None and self.timeouts.stall_after <= slowest_probe:
            problems.append(
                (
                    ("timeouts", "stall_after"),
                    f"must exceed health.interval + health.timeout ({slowest_probe:g} s), or a healthy "
                    "endpoint looks frozen between two probes",
                )
            )
        if problems:
            raise invalid(*problems)
        return self

    def _kubernetes_problems(self) -> list[tuple[Loc, str]]:
        wc = self.workers
        if wc is None:
            return []
        if wc.provider == "local" and self.discovery is not None:
            return [(("discovery",), "local workers are found by fleetgate itself; drop discovery")]
        if wc.provider != "kubernetes":
            return []
        if self.discovery is None:
            return [
                (
                    ("discovery",),
                    "provider: kubernetes needs discovery.kubernetes (the pods' endpoints say when one is "
                    "ready)",
                )
            ]
        if not wc.served_name and not self.models:
            return [(("workers", "served_model_name"), "name the model the pods serve (or list models)")]
        return []

    @property
    def workers_namespace(self) -> str:
        """The namespace of a kubernetes pool's Deployment."""
        wc = self.workers
        if wc is not None and wc.namespace is not None:
            return wc.namespace
        return self.discovery.kubernetes.namespace if self.discovery is not None else "default"

    @property
    def stall_after(self) -> float:
        """timeouts.stall_after, or a default that a healthy endpoint's probes always beat."""
        given = self.timeouts.stall_after
        return given if given is not None else max(5.0, self.health.interval + self.health.timeout + 1.0)

    def _first_name(self) -> str | None:
        named = next((m.name for m in self.models if m.name is not None), None)
        return named if named is not None or self.workers is None else (self.workers.served_name or None)

    def model_map(self) -> dict[str, str]:
        """Public model name -> the name sent upstream, for the names this pool lists (a pool of workers
        always serves its workers' name)."""
        first = self._first_name()
        out: dict[str, str] = {}
        if self.workers is not None and self.workers.served_name:
            out[self.workers.served_name] = self.workers.served_name
        for m in self.models:
            upstream = m.name if m.name is not None else (m.target or first)
            assert upstream is not None
            out[m.public_name] = upstream
        return out
