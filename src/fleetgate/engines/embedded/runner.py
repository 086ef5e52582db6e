"""One forward pass over a step's work: packs the tokens, lays out the paged cache, returns the logits.

The model sees a single row of every scheduled token with its own position; `attention.py` keeps the
sequences apart. Logits are computed only for the tokens that are sampled (a sequence's last scheduled
token, once its prompt is complete), through transformers' `logits_to_keep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fleetgate.engines.embedded.attention import PagedKV, Prefill, StepLayout


@dataclass(frozen=True, slots=True)
class Chunk:
    """Tokens of one sequence to run now: positions [start, start + len(tokens)) of its context."""

    tokens: list[int]
    start: int
    blocks: list[int]
    sample: bool


class ModelRunner:
    def __init__(self, model: Any, kv: PagedKV, block_size: int, device: torch.device) -> None:
        self.model = model
        self.kv = kv
        self.block_size = block_size
        self.device = device
        self._offsets = torch.arange(block_size)

    def _slots(self, blocks: list[int], lo: int, hi: int) -> list[int]:
        """Cache slots of positions [lo, hi) of a sequence that owns `blocks`."""
        bs = self.block_size
        return [blocks[p // bs] * bs + p % bs for p in range(lo, hi)]

    def _layout(self, chunks: list[Chunk]) -> StepLayout:
        bs = self.block_size
        slots: list[int] = []
        prefills: list[Prefill] = []
        decode_rows: list[int] = []
        decode: list[Chunk] = []
        at = 0
        for c in chunks:
            n = len(c.tokens)
            slots += self._slots(c.blocks, c.start, c.start + n)
            if n == 1:
                decode_rows.append(at)
                decode.append(c)
            elif c.start == 0:
                prefills.append(Prefill(at, at + n, 0, None, None))
            else:
                seen = torch.tensor(self._slots(c.blocks, 0, c.start + n), device=self.device)
                causal = torch.arange(c.start + n).unsqueeze(0) <= (c.start + torch.arange(n)).unsqueeze(1)
                prefills.append(Prefill(at, at + n, c.start, seen, causal.to(self.device)))
            at += n
        rows: torch.Tensor | None = None
        context: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        if decode:
            lengths = torch.tensor([c.start + 1 for c in decode])
            longest = int(lengths.max())
            width = -(-longest // bs)
            table = torch.zeros((len(decode), width), dtype=torch.long)
            for i, c in enumerate(decode):
                used = c.blocks[: -(-(c.start + 1) // bs)]
                table[i, : len(used)] = torch.tensor(used)
            context = (table.unsqueeze(2) * bs + self._offsets).reshape(len(decode), -1)[:, :longest]
            mask = (torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)).view(
                len(decode), 1, 1, longest
            )
            rows = torch.tensor(decode_rows)
            context, mask, rows = context.to(self.device), mask.to(self.device), rows.to(self.device)
        return StepLayout(
            slots=torch.tensor(slots, device=self.device),
            decode_rows=rows,
            decode_context=context,
            decode_mask=mask,
            prefills=prefills,
            only_decode=not prefills,
        )

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> torch.Tensor:
        """Logits [number of sampling chunks, vocab] in float32, in the order of `chunks`."""
        ids: list[int] = []
        positions: list[int] = []
        keep: list[int] = []
        for c in chunks:
            ids += c.tokens
            positions += range(c.start, c.start + len(c.tokens))
            if c.sample:
                keep.append(len(ids) - 1)
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=torch.tensor([positions], device=self.device),
            logits_to_keep=torch.tensor(keep, device=self.device),
            use_cache=False,
            fleetgate_step=self._layout(chunks),
            fleetgate_kv=self.kv,
        )
        logits: torch.Tensor = out.logits[0].float()
        return logits
