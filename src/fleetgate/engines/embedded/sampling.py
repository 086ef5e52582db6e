"""Per-request sampling over a batch: penalties, grammar masks, temperature, top-k, top-p, seeded draws.

All rows are processed together; only what differs per row (a seed's generator, a grammar's mask) is
touched row by row. A seeded request draws from its own generator, so its output does not depend on what
else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """vLLM's defaults and meanings: temperature 0 is greedy, top_k -1 (or 0) and top_p 1 are off."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_tokens: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5 or self.top_k == 1


@dataclass(slots=True)
class Row:
    """One sequence's view for this step's draw."""

    params: SamplingParams
    output: list[int]
    generator: torch.Generator | None
    allowed: torch.Tensor | None = None  # bool [V] from a grammar
    block_eos: bool = False  # min_tokens not reached, or ignore_eos


class Sampler:
    def __init__(self, eos_ids: frozenset[int], seed: int, device: torch.device) -> None:
        self.eos = sorted(eos_ids)
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def sample(self, logits: torch.Tensor, rows: list[Row]) -> list[int]:
        """One token per row of `logits` [B, V] (float32, on the engine's device)."""
        self._penalise(logits, rows)
        for i, r in enumerate(rows):
            if r.allowed is not None:
                logits[i].masked_fill_(~r.allowed, float("-inf"))
            if r.block_eos and self.eos:
                logits[i, self.eos] = float("-inf")
        greedy = [r.params.greedy for r in rows]
        if all(greedy):
            return logits.argmax(dim=-1).tolist()
        temps = [1.0 if g else r.params.temperature for r, g in zip(rows, greedy, strict=True)]
        scaled = logits / torch.tensor(temps, device=self.device).unsqueeze(1)
        probs = self._filtered(scaled, rows).softmax(dim=-1)
        # One uniform number per row (multinomial), not one per vocabulary entry.
        drawn = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        for i, r in enumerate(rows):
            if r.generator is not None:
                drawn[i] = torch.multinomial(probs[i], 1, generator=r.generator)[0]
        if any(greedy):
            drawn = torch.where(torch.tensor(greedy, device=self.device), logits.argmax(dim=-1), drawn)
        return drawn.tolist()

    @staticmethod
    def _penalise(logits: torch.Tensor, rows: list[Row]) -> None:
        for i, r in enumerate(rows):
            p = r.params
            if not (p.presence_penalty or p.frequency_penalty) or not r.output:
                continue
            seen = torch.tensor(r.output, device=logits.device)
            counts = torch.bincount(seen, minlength=logits.shape[1])[: logits.shape[1]]
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)

    @staticmethod
    def _filtered(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
        """Logits with everything outside each row's top-k and top-p set to -inf."""
        vocab = logits.shape[1]
        ks = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows]
        ps = [r.params.top_p for r in rows]
        if all(k == vocab for k in ks) and all(p >= 1.0 for p in ps):
            return logits
        device = logits.device
        ordered, order = logits.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=device).unsqueeze(0)
        drop = rank >= torch.tensor(ks, device=device).unsqueeze(1)
        probs = ordered.masked_fill(drop, float("-inf")).softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p; the first token always stays.
        before = probs.cumsum(dim=-1) - probs
        drop |= before > torch.tensor(ps, device=device).unsqueeze(1)
        drop[:, 0] = False
        return logits.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
