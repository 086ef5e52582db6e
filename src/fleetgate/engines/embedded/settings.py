"""The engine's settings, as the command line gives them (vLLM's flag names where vLLM has one)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class EngineSettings:
    model: str
    served_model_names: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None  # None: CUDA when present, else the CPU
    dtype: str = "auto"
    max_num_seqs: int = 32
    max_model_len: int | None = None  # None: the model's own, shortened to what the KV cache holds
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_gib: float | None = (
        None  # None: 4 GiB on the CPU (vLLM's CPU default), else what the GPU has left
    )
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    seed: int = 0
    cpu_threads: int | None = None  # None: all cores the process may use but one, which serves HTTP
    demo: bool = False
    chat_template: str | None = None  # a file, or the template itself (vLLM's --chat-template)

    @property
    def model_name(self) -> str:
        return self.served_model_names[0] if self.served_model_names else self.model
