"""Paged attention for transformers models: one forward serves a whole batch of sequences of any lengths.

The model's own layers (projections, rotary embeddings, norms, MLPs) run unchanged; transformers hands our
function each layer's query and new key/value states, and we keep keys and values in a block pool shared by
all sequences, as vLLM does. A step's tokens arrive packed in one row (no padding through the linear
layers); only attention is grouped: decode tokens together in one call, each prefill chunk on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

IMPLEMENTATION = "fleetgate_paged"


@dataclass(slots=True)
class Prefill:
    """Prompt tokens of one sequence at packed positions [start, end), after `offset` cached tokens."""

    start: int
    end: int
    offset: int
    # Slots of the whole context (cached prefix and this chunk), None when nothing was cached before.
    context: torch.Tensor | None
    mask: torch.Tensor | None


@dataclass(slots=True)
class StepLayout:
    """Where this step's tokens are written and what each one attends to; the same for every layer."""

    slots: torch.Tensor  # [T] cache slot of each packed token
    decode_rows: torch.Tensor | None  # [Bd] packed positions of decode tokens
    decode_context: torch.Tensor | None  # [Bd, L] slots each decode token attends to
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, L] which of those slots are real
    prefills: list[Prefill]
    only_decode: bool


class PagedKV:
    """Key and value tensors of every layer, indexed by slot = block * block_size + offset."""

    def __init__(
        self,
        layers: int,
        blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (blocks * block_size, kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

    @staticmethod
    def bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * layers * kv_heads * head_dim * dtype.itemsize


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query [1, H, T, D], key/value [1, KV, T, D] -> [1, T, H, D]."""
    step: StepLayout = kwargs["fleetgate_step"]
    kv: PagedKV = kwargs["fleetgate_kv"]
    layer = cast(int, module.layer_idx)
    k_cache, v_cache = kv.keys[layer], kv.values[layer]
    new_k = key[0].transpose(0, 1)
    new_v = value[0].transpose(0, 1)
    k_cache.index_copy_(0, step.slots, new_k)
    v_cache.index_copy_(0, step.slots, new_v)
    q = query[0]
    gqa = q.shape[0] != new_k.shape[1]
    if step.only_decode:
        assert step.decode_context is not None
        out = _decode(q.transpose(0, 1).unsqueeze(2), k_cache, v_cache, step, scaling, gqa)
        return out.squeeze(2).unsqueeze(0), None
    heads, tokens, dim = q.shape
    out = q.new_empty((tokens, heads, dim))
    if step.decode_rows is not None:
        rows = q.index_select(1, step.decode_rows).transpose(0, 1).unsqueeze(2)
        out[step.decode_rows] = _decode(rows, k_cache, v_cache, step, scaling, gqa).squeeze(2)
    for p in step.prefills:
        qp = q[:, p.start : p.end].unsqueeze(0)
        if p.context is None:
            kp = key[:, :, p.start : p.end]
            vp = value[:, :, p.start : p.end]
            o = sdpa(qp, kp, vp, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:
            kp = k_cache[p.context].transpose(0, 1).unsqueeze(0)
            vp = v_cache[p.context].transpose(0, 1).unsqueeze(0)
            o = sdpa(qp, kp, vp, attn_mask=p.mask, scale=scaling, enable_gqa=gqa)
        out[p.start : p.end] = o[0].transpose(0, 1)
    return out.unsqueeze(0), None


def _decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, step: StepLayout, scaling: float, gqa: bool
) -> torch.Tensor:
    assert step.decode_context is not None
    k = k_cache[step.decode_context].transpose(1, 2)
    v = v_cache[step.decode_context].transpose(1, 2)
    return sdpa(q, k, v, attn_mask=step.decode_mask, scale=scaling, enable_gqa=gqa)


def register() -> None:
    """Make the implementation known to transformers (a global registry; registering twice is harmless)."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, paged_attention)
