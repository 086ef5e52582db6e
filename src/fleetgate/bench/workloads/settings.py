"""Workload settings: `WorkloadSettings` and `Tenant`, validated from a mapping or a YAML file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetgate.bench.records import Api
from fleetgate.bench.workloads.lengths import length_dist

Kind = Literal["random", "shared-prefix", "multi-turn", "sharegpt-like", "tools", "trace"]
Language = Literal["en", "zh", "mixed"]


# ---- settings ---------------------------------------------------------------------------------------------


class WorkloadConfigError(ValueError):
    """A workload file or mapping that does not validate; the message names the source and the key path."""


class Tenant(BaseModel):
    """A tenant the load is split between; the runner sends its `api_key` (found by `RequestSpec.tenant`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Name reported on each request (RequestSpec.tenant).")
    api_key: str | None = Field(default=None, description="Bearer key the runner sends for this tenant.")
    priority: int | None = Field(
        default=None, description="Priority reported on each request of this tenant."
    )
    weight: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="Share of requests, relative.")


class WorkloadSettings(BaseModel):
    """What to send: the kind of workload and its shape. Every field has a default; sizes in target tokens."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field(
        default="random",
        description="random | shared-prefix | multi-turn | sharegpt-like | tools | trace.",
    )
    api: Api = Field(default="chat", description="chat (/v1/chat/completions), completions, responses.")
    input_len: str = Field(
        default="512",
        description=(
            "Prompt tokens (distribution; see length_dist) of random and of multi-turn's first turn; "
            "sharegpt-like uses it only when set; shared-prefix, tools and trace ignore it."
        ),
    )
    output_len: str = Field(default="128", description="max_tokens distribution.")
    groups: int = Field(default=10, ge=1, description="shared-prefix: groups, one system prompt each.")
    prompts_per_group: int = Field(
        default=10, ge=1, description="shared-prefix: distinct questions per group."
    )
    system_len: int = Field(default=2000, ge=0, description="shared-prefix: system prompt tokens.")
    question_len: int = Field(default=200, ge=1, description="shared-prefix: question tokens.")
    turns: str = Field(default="uniform:3:8", description="multi-turn: turns per session (distribution).")
    sessions: int = Field(default=100, ge=1, description="multi-turn: conversations kept open at once.")
    turn_input_len: str = Field(
        default="normal:150:50", description="multi-turn: tokens of each user message after the first."
    )
    token_ids: bool = Field(
        default=False,
        description="completions only: token-id prompts of exact length (no /tokenize calibration needed).",
    )
    language: Language = Field(
        default="en",
        description=(
            "Prompt language: en, zh, or mixed (half each: per prompt, per group for shared-prefix, per "
            "session for multi-turn)."
        ),
    )
    ignore_eos: bool = Field(
        default=True, description="Send vLLM's ignore_eos so output lengths are as planned."
    )
    trace_file: str | None = Field(default=None, description="trace: JSONL file to replay.")
    tenants: list[Tenant] = Field(
        default_factory=list, description="Tenants drawn per request by weight; empty = no tenant."
    )

    @field_validator("input_len", "output_len", "turns", "turn_input_len")
    @classmethod
    def _length_spec(cls, value: str) -> str:
        length_dist(value)
        return value

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: list[Tenant]) -> list[Tenant]:
        names = [t.name for t in tenants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tenant names must be unique, repeated: {', '.join(duplicates)}")
        if tenants and not sum(t.weight for t in tenants) > 0:
            raise ValueError("at least one tenant needs a weight above 0")
        return tenants

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadSettings:
        problem = _inconsistency(self)
        if problem:
            raise ValueError(problem)
        return self

    @classmethod
    def from_mapping(cls, data: Any, source: str = "workload") -> WorkloadSettings:
        """Validates a mapping (a YAML document or a section of one); errors read `source: key.path: why`."""
        if not isinstance(data, Mapping):
            raise WorkloadConfigError(
                f"{source}: expected a mapping of workload settings, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
                message = str(err["msg"]).removeprefix("Value error, ")
                lines.append(f"{source}: {path}: {message}" if path else f"{source}: {message}")
            raise WorkloadConfigError("\n".join(lines)) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WorkloadSettings:
        """Reads a YAML file; a relative `trace_file` is taken relative to the file's folder."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkloadConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise WorkloadConfigError(f"{file}: not valid YAML: {exc}") from None
        settings = cls.from_mapping({} if data is None else data, str(file))
        if settings.trace_file and not Path(settings.trace_file).is_absolute():
            settings = settings.model_copy(update={"trace_file": str(file.parent / settings.trace_file)})
        return settings


def _inconsistency(s: WorkloadSettings) -> str | None:
    if s.kind == "trace" and not s.trace_file:
        return "trace_file: the trace workload needs a trace_file"
    if s.kind == "tools" and s.api != "chat":
        return f"api: the tools workload sends chat requests only (api: chat), got {s.api}"
    if s.token_ids and s.api != "completions":
        return f"token_ids: token-id prompts need api: completions, got {s.api}"
    if s.token_ids and s.kind == "multi-turn":
        return "token_ids: multi-turn sends the answers' text back, so it cannot use token-id prompts"
    return None
