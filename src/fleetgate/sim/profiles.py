"""Simulator profiles: a GPU + model + vLLM setup as named data (`profile_data/*.yaml`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

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

    step = max(b0, b_tok * tokens) + b_seq * seqs + b_kv * decode_context + b_attn * prefill_pairs

    b0 is the floor of a step (weights read once per step, launch overhead; b0_eager without CUDA graphs),
    b_tok the cost per token computed (prefill is compute bound), b_seq the per-sequence cost (sampling,
    detokenization in the API server), b_kv the per-token cost of reading the KV of decoding sequences,
    b_attn the quadratic part of prefill attention (pairs = chunk tokens x their mean context). `overhead` is
    paid once per request before it can be scheduled (HTTP, tokenization).
    """

    b0: float = Field(gt=0)
    b0_eager: float = Field(gt=0)
    b_tok: float = Field(ge=0)
    b_seq: float = Field(ge=0)
    b_kv: float = Field(ge=0)
    b_attn: float = Field(ge=0)
    overhead: float = Field(ge=0)

    def seconds(
        self, tokens: int, seqs: int, decode_context: int, prefill_pairs: float, eager: bool = False
    ) -> float:
        floor = self.b0_eager if eager else self.b0
        return (
            max(floor, self.b_tok * tokens)
            + self.b_seq * seqs
            + self.b_kv * decode_context
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
