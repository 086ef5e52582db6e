"""Sentence embeddings: mean pooling over the real tokens, then L2 normalisation (sentence-transformers'
recipe for all-MiniLM and its kind). Requests that arrive while a batch runs are run together next.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import torch


class Embedder:
    def __init__(self, model: Any, device: torch.device, pad_id: int) -> None:
        self.model = model
        self.device = device
        self.pad_id = pad_id

    @torch.inference_mode()
    def embed(self, prompts: list[list[int]]) -> list[list[float]]:
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        vectors: list[list[float]] = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().tolist()
        return vectors


@dataclass(eq=False, slots=True)
class _Job:
    prompts: list[list[int]]
    done: asyncio.Future[list[list[float]]]


@dataclass(slots=True)
class EmbedQueue:
    """Batches concurrent requests: one forward per batch of up to `max_tokens` tokens, in a worker thread."""

    embedder: Embedder
    max_tokens: int
    waiting: list[_Job] = field(default_factory=list)
    running: list[_Job] = field(default_factory=list)
    sleep_level: int = 0
    _task: asyncio.Task[None] | None = None

    async def embed(self, prompts: list[list[int]]) -> list[list[float]]:
        job = _Job(prompts, asyncio.get_running_loop().create_future())
        self.waiting.append(job)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await job.done

    async def _drain(self) -> None:
        while self.waiting:
            self.running, budget = [], self.max_tokens
            while self.waiting and (not self.running or budget >= sum(map(len, self.waiting[0].prompts))):
                job = self.waiting.pop(0)
                budget -= sum(map(len, job.prompts))
                self.running.append(job)
            prompts = [p for job in self.running for p in job.prompts]
            try:
                vectors = await asyncio.to_thread(self.embedder.embed, prompts)
            except Exception as e:  # a failed batch fails its requests, not the queue
                for job in self.running:
                    if not job.done.done():
                        job.done.set_exception(e)
                continue
            at = 0
            for job in self.running:
                if not job.done.done():
                    job.done.set_result(vectors[at : at + len(job.prompts)])
                at += len(job.prompts)
        self.running = []

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def kv_usage(self) -> float:
        return 0.0

    def waiting_by_reason(self) -> tuple[int, int]:
        return len(self.waiting), 0

    def lora_state(self) -> tuple[list[str], list[str]]:
        return [], []
