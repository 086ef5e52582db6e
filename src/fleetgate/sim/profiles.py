"""Simulator profiles: a GPU + model + vLLM setup as named data (`profile_data/*.yaml`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KVSpec(_Frozen):
    block_size: int = Field(16, gt=0)
    num_gpu_blocks: int = Field(gt=0)
    bytes_per_token: int = Field(ge=0)


class Limits(_Frozen):
    max_num_seqs: int = Field(gt=0)
    max_num_batched_tokens: int = Field(gt=0)


class StepModel(_Frozen):
    """Seconds one engine step takes on the profiled GPU.

    step = max(b0, b_tok * tokens) + eager * b_eager + b_seq * seqs
           + b_kv * sum(ctx) + b_kv2 * sum(ctx * min(ctx, KNEE)) + b_attn * prefill_pairs

    b0 is the floor of a step (all weights read once), b_tok the cost per token computed (prefill is compute
    bound), b_eager what a step costs more without CUDA graphs, b_seq the per-sequence cost (sampling,
    detokenization in the API server), b_kv the per-token cost of reading decoding sequences' KV. b_kv2 is
    empirical: on the H200 a decode step over 8 sequences of 8k context took 35 ms where the linear term
    predicts 7 ms, so per-sequence attention grows faster than linearly up to the knee (linearly beyond it,
    where nothing was measured). b_attn is the quadratic part of prefill attention (pairs = chunk tokens x
    their mean context). `overhead` is paid once per request between the client and the engine (HTTP,
    tokenization, detokenization).
    """

    KNEE: ClassVar[int] = 8192

    b0: float = Field(gt=0)
    b_eager: float = Field(ge=0)
    b_tok: float = Field(ge=0)
    b_seq: float = Field(ge=0)
    b_kv: float = Field(ge=0)
    b_kv2: float = Field(ge=0)
    b_attn: float = Field(ge=0)
    overhead: float = Field(ge=0)

    def seconds(
        self,
        tokens: int,
        seqs: int,
        decode_context: int,
        decode_context_sq: float,
        prefill_pairs: float,
        eager: bool = False,
    ) -> float:
        return (
            max(self.b0, self.b_tok * tokens)
            + (self.b_eager if eager else 0.0)
            + self.b_seq * seqs
            + self.b_kv * decode_context
            + self.b_kv2 * decode_context_sq
            + self.b_attn * prefill_pairs
        )


class Startup(_Frozen):
    other: float = Field(ge=0)
    load: float = Field(ge=0)
    compile: float = Field(ge=0)
    graph: float = Field(ge=0)

    def total(self, eager: bool) -> float:
        return self.other + self.load + (0.0 if eager else self.compile + self.graph)


class SleepTimes(_Frozen):
    level1: float = Field(ge=0)
    level2: float = Field(ge=0)
    wake: float = Field(ge=0)


class Profile(_Frozen):
    name: str
    description: str
    derivation: str
    task: Literal["generate", "embed"] = "generate"
    embedding_dim: int = 0
    model: str
    architecture: str
    max_model_len: int = Field(gt=0)
    weights_gib: float = Field(ge=0)
    kv: KVSpec
    limits: Limits
    step: StepModel
    startup: Startup
    sleep: SleepTimes
    lora_load_seconds: float = Field(ge=0)


def _data_dir() -> Path:
    return Path(str(resources.files("fleetgate.sim") / "profile_data"))


def profile_names() -> list[str]:
    return sorted(p.stem for p in _data_dir().glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a YAML file of the same shape by path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = _data_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(profile_names())
            raise ValueError(f"unknown simulator profile {name_or_path!r}; built-in profiles: {known}")
    with path.open(encoding="utf-8") as f:
        return Profile.model_validate(yaml.safe_load(f))
