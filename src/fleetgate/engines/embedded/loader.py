"""From a model directory to a plan (task, device, dtype, memory) and then to a loaded model.

Everything that can be known before loading is checked first, so that a wrong directory, an architecture we
cannot run or a model that will not fit fails in a second with a sentence that says what to change, not after
minutes of loading with a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from fleetgate.engines.embedded.attention import IMPLEMENTATION, PagedKV, register
from fleetgate.engines.embedded.settings import EngineSettings

# Decoder layouts whose attention goes through transformers' attention interface with plain full attention,
# which our paged attention replaces; the rest need vLLM.
GENERATE_ARCHITECTURES = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
)
EMBED_ARCHITECTURES = frozenset(
    {"BertModel", "RobertaModel", "XLMRobertaModel", "MPNetModel", "DistilBertModel"}
)
_GIB = 1 << 30
CPU_KV_DEFAULT = 4 * _GIB  # vLLM's VLLM_CPU_KVCACHE_SPACE default
# Above this size a CPU model is kept in bfloat16: float32 is faster on most CPUs but doubles the memory.
_CPU_FLOAT32_MAX_PARAMS = 1_000_000_000
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")


class LoadError(Exception):
    """The model cannot be served as asked; the message says why and what to change."""


@dataclass(frozen=True, slots=True)
class Plan:
    path: Path
    config: Any  # transformers.PretrainedConfig
    architecture: str
    task: Literal["generate", "embed"]
    device: torch.device
    dtype: torch.dtype
    parameters: int
    weights_bytes: int
    max_model_len: int
    kv_bytes_per_token: int
    num_blocks: int
    block_size: int

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size


def locate(model: str, on_download: Callable[[], None] = lambda: None) -> Path:
    """The model's directory: `model` itself, or a hub id downloaded into the hub cache (`on_download`
    runs first, so the download shows as a phase of its own)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LoadError(f"model path {path} is not a directory")
        if not os.access(path, os.R_OK | os.X_OK):
            raise LoadError(f"model directory {path} is not readable by this user")
        return path
    if not _HUB_ID.match(model) or model.startswith("."):
        raise LoadError(f"model directory {path} does not exist")
    on_download()
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
        return Path(snapshot_download(model, allow_patterns=patterns))
    except Exception as e:  # the hub client raises many kinds; all mean "not here, not fetchable"
        raise LoadError(
            f"model directory {model} does not exist here and could not be fetched from the Hugging Face "
            f"hub ({type(e).__name__}: {e}); give a local directory or go online"
        ) from None


def _read_config(path: Path) -> Any:
    from transformers import AutoConfig

    file = path / "config.json"
    if not file.is_file():
        raise LoadError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        file.read_bytes()
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except PermissionError:
        raise LoadError(f"{file} is not readable by this user") from None
    except (OSError, ValueError, KeyError) as e:
        raise LoadError(f"cannot read {file}: {e}") from None


def _task(architecture: str) -> Literal["generate", "embed"]:
    if architecture in GENERATE_ARCHITECTURES:
        return "generate"
    if architecture in EMBED_ARCHITECTURES:
        return "embed"
    raise LoadError(
        f"unsupported architecture {architecture}: the embedded engine generates with "
        f"{', '.join(sorted(GENERATE_ARCHITECTURES))} and embeds with "
        f"{', '.join(sorted(EMBED_ARCHITECTURES))}; serve this model with vLLM"
    )


def _device(requested: str | None) -> torch.device:
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    return device


def _count_parameters(config: Any, task: str) -> int:
    """Parameters of the model as the config shapes it, counted on the meta device (nothing allocated)."""
    from transformers import AutoModel, AutoModelForCausalLM

    factory = AutoModelForCausalLM if task == "generate" else AutoModel
    with torch.device("meta"):
        model = factory.from_config(config)  # type: ignore[no-untyped-call]
    return sum(p.numel() for p in model.parameters())


def _dtype(name: str, config: Any, device: torch.device, parameters: int) -> torch.dtype:
    if name != "auto":
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise LoadError(
                f"--dtype {name} is not a floating-point dtype (float32, bfloat16, float16, auto)"
            )
        return dtype
    if device.type == "cpu":
        return torch.float32 if parameters <= _CPU_FLOAT32_MAX_PARAMS else torch.bfloat16
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return torch.float16 if stored == torch.float16 or stored == "float16" else torch.bfloat16


def _model_max_len(config: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            length = value
            break
    else:
        length = 2048
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ()
    sliding = "sliding_attention" in layer_types or (
        getattr(config, "use_sliding_window", True) and not layer_types and window
    )
    # Our attention is full attention; within the window the two are the same thing.
    if sliding and isinstance(window, int) and window > 0:
        length = min(length, window)
    return length


def available_memory(device: torch.device) -> tuple[int, int]:
    """(free now, total) bytes on the device; on the CPU, MemAvailable and MemTotal."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
    except OSError:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, pages
    return info.get("MemAvailable", info.get("MemFree", 0)), info.get("MemTotal", 0)


def _kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return PagedKV.bytes_per_token(int(config.num_hidden_layers), kv_heads, head_dim, dtype)


def _gib(n: float) -> str:
    return f"{n / _GIB:.2f} GiB"


def plan(settings: EngineSettings, path: Path) -> Plan:
    """Check the directory and size the model and its KV cache against the device, before loading."""
    config = _read_config(path)
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        raise LoadError(f'{path / "config.json"} names no architecture ("architectures" is empty)')
    architecture = architectures[0]
    task = _task(architecture)
    device = _device(settings.device)
    parameters = _count_parameters(config, task)
    dtype = _dtype(settings.dtype, config, device, parameters)
    weights = parameters * dtype.itemsize
    free, total = available_memory(device)
    # Activations, the allocator's slack and (on the CPU) the Python process itself.
    reserve = _GIB // 2 + weights // 10
    if weights + reserve > free:
        raise LoadError(
            f"model too large for memory: {architecture} with {parameters / 1e9:.2f}B parameters takes "
            f"{_gib(weights)} in {str(dtype).removeprefix('torch.')} and about {_gib(weights + reserve)} "
            f"with runtime overhead, but {device.type} has {_gib(free)} available; use a smaller model, "
            + ("a GPU or --dtype bfloat16" if device.type == "cpu" else "or a larger GPU")
        )
    model_len = _model_max_len(config)
    if settings.max_model_len is not None and settings.max_model_len > model_len:
        raise LoadError(
            f"--max-model-len {settings.max_model_len} is greater than the model's maximum context length "
            f"({model_len}, from its config.json)"
        )
    max_len = settings.max_model_len or model_len
    if task == "embed":
        return Plan(path, config, architecture, task, device, dtype, parameters, weights, max_len, 0, 0, 0)
    per_token = _kv_bytes_per_token(config, dtype)
    if settings.kv_cache_gib is not None:
        budget = int(settings.kv_cache_gib * _GIB)
    elif device.type == "cpu":
        budget = min(CPU_KV_DEFAULT, free - weights - reserve)
    else:
        budget = int(total * settings.gpu_memory_utilization) - (total - free) - weights - reserve
    bs = settings.block_size
    blocks = max(0, budget // (per_token * bs))
    if blocks * bs < max_len:
        if settings.max_model_len is not None or blocks * bs < bs * 8:
            raise LoadError(
                f"to serve one request of max_model_len {max_len} tokens the KV cache needs "
                f"{_gib(max_len * per_token)}, more than the {_gib(max(budget, 0))} available for it; "
                "give --kv-cache-gib more memory or a smaller --max-model-len"
            )
        max_len = blocks * bs
    # No more blocks than max_num_seqs full-length sequences can use: memory the engine would never touch.
    blocks = min(blocks, -(-settings.max_num_seqs * max_len // bs))
    return Plan(
        path, config, architecture, task, device, dtype, parameters, weights, max_len, per_token, blocks, bs
    )


def cpu_threads(p: Plan, requested: int | None) -> int:
    """Set PyTorch's thread count for a CPU engine and return it (what the engine computes with).

    One core is left to the event loop by default: on a small machine, matrix threads that compete with the
    thread answering HTTP slow both (2 cores, demo model: 1.4x the tokens/s at concurrency 1, 1.8x at 8).
    """
    if p.device.type != "cpu":
        return torch.get_num_threads()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = requested or max(1, usable - 1)
    torch.set_num_threads(threads)
    return threads


def weight_files(path: Path) -> list[Path]:
    files = [f for pattern in _WEIGHTS for f in sorted(path.glob(pattern))]
    if not files:
        raise LoadError(f"no weights in {path}: expected *.safetensors (or pytorch_model*.bin) files")
    return files


def load_model(p: Plan) -> Any:
    """The transformers model, on its device, in eval mode; generation models use paged attention."""
    from transformers import AutoModel, AutoModelForCausalLM

    weight_files(p.path)
    if p.task == "generate":
        register()
        factory: Any = AutoModelForCausalLM
        attention = IMPLEMENTATION
    else:
        factory, attention = AutoModel, "sdpa"
    try:
        model = factory.from_pretrained(
            p.path, dtype=p.dtype, attn_implementation=attention, local_files_only=True
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise LoadError(f"loading the weights in {p.path} failed: {e}") from None
    return model.to(p.device).eval()


def chat_template(value: str) -> str:
    """vLLM's --chat-template: a file holding the template, or the template itself. Text that looks like
    a path (no Jinja in it) must be a file that exists, as in vLLM."""
    if "{" in value or "\n" in value:
        return value
    file = Path(value).expanduser()
    try:
        return file.read_text()
    except OSError as e:
        raise LoadError(f"--chat-template {value}: cannot read it ({e.strerror or e})") from None


def load_tokenizer(path: Path, template: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise LoadError(f"cannot load the tokenizer in {path}: {e}") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise LoadError(f"the tokenizer in {path} has no tokenizer.json: the engine needs a fast tokenizer")
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer
