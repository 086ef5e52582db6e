"""Workers fleetgate starts itself, and how many it wants."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from fleetgate.config.fields import STRICT, absolute_path, bad_env_name, env_var_name, seconds
from fleetgate.config.problems import Loc, invalid


class ScalingConfig(BaseModel):
    """How many workers a pool wants from its load (docs/scaling.md has the arithmetic)."""

    model_config = STRICT

    rule: Literal["queue_delay", "request_count", "concurrency"] = Field(
        default="queue_delay",
        description="queue_delay (a request waited > target s) | request_count | concurrency (per worker).",
    )
    target: float = seconds(2.0, "The rule's target: seconds, requests per worker or streams per worker.")
    interval: float = seconds(1.0, "Seconds between autoscaler ticks (a held request ticks it at once).")


class WorkersConfig(BaseModel):
    """Workers fleetgate starts itself: child processes on 127.0.0.1 (provider local), or the pods of a
    Kubernetes Deployment it scales through the /scale subresource (provider kubernetes)."""

    model_config = STRICT

    provider: Literal["local", "kubernetes"] = Field(
        default="local", description="local (child processes) | kubernetes (a Deployment's pods)."
    )
    deployment: str | None = Field(
        default=None, description="kubernetes: the Deployment whose replicas fleetgate sets."
    )
    namespace: str | None = Field(
        default=None, description="kubernetes: its namespace (default: the pool's discovery namespace)."
    )
    engine: Literal["vllm", "embedded", "sim"] | None = Field(
        default=None,
        description="vllm | embedded | sim (required for local; the Deployment says for kubernetes).",
    )
    model: str = Field(
        default="",
        description="Hub id or directory; `demo` (embedded); a simulator profile (sim). Required for local.",
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
    idle_timeout: float = seconds(300.0, "Seconds without requests before the last idle worker goes.")
    sleep: bool = Field(default=False, description="Scale down by sleeping (vLLM sleep mode), not stopping.")
    sleep_level: Literal[1, 2] = Field(default=1, description="1 offloads weights to CPU; 2 discards them.")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    stabilization_window: float = Field(
        default=30.0, ge=0, allow_inf_nan=False, description="Seconds of low load before scaling down."
    )
    scale_up_limit: int = Field(default=4, ge=1, description="Workers started or woken per scale_up_period.")
    scale_up_period: float = seconds(10.0, "The window scale_up_limit counts over, s.")
    backoff_base: float = seconds(1.0, "First restart delay after a crash, s; doubles per failure.")
    backoff_cap: float = seconds(60.0, "Longest restart delay, s.")
    max_failures: int = Field(default=5, ge=1, description="Failures in a row that mark the pool failed.")
    startup_timeout: float = seconds(1800.0, "Seconds a worker may take to become ready (download included).")
    max_hold: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a request waits for a worker to start when none is ready (default: "
        "startup_timeout, as long as a cold start may take); limits.max_queue_wait bounds waits for room.",
    )
    drain_deadline: float = Field(
        default=60.0, ge=0, allow_inf_nan=False, description="Seconds in-flight streams get before a stop."
    )
    stop_grace: float = seconds(10.0, "Seconds from SIGTERM to SIGKILL.")
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
        return env_var_name(value)

    @field_validator("hf_token_file", "log_dir")
    @classmethod
    def _file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return absolute_path(value, info)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [((name,), "must be an environment variable name") for name in value if bad_env_name(name)]
        if bad:
            raise invalid(*bad)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if self.provider == "local" and self.engine is None:
            problems.append((("engine",), "required for local workers (vllm | embedded | sim)"))
        if self.provider == "local" and not self.model:
            problems.append((("model",), "required for local workers"))
        if self.provider == "kubernetes" and self.deployment is None:
            problems.append((("deployment",), "required with provider: kubernetes"))
        if self.provider == "local" and (self.deployment or self.namespace):
            problems.append((("deployment",), "only with provider: kubernetes"))
        if self.min_workers > self.max_workers:
            problems.append((("min_workers",), f"must not exceed max_workers ({self.max_workers})"))
        if self.backoff_base > self.backoff_cap:
            problems.append((("backoff_base",), "must not exceed backoff_cap"))
        if self.sleep and self.engine == "embedded" and self.provider == "local":
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
            raise invalid(*problems)
        return self

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def worker_gpus(self) -> int:
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1 if self.engine == "vllm" and self.provider == "local" else 0
