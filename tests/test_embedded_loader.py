"""Clear errors before any weight is loaded: a missing or unreadable directory, an architecture we cannot run,
a model too large for memory, a context that does not fit; and how the command line reports them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetgate.engines.embedded import loader
from fleetgate.engines.embedded.settings import EngineSettings
from tests.test_embedded_engine import demo_dir

# Llama-3.1-70B's shapes: no machine that runs this suite holds it in float32 (280 GB).
LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "vocab_size": 128256,
}


def _model_dir(root: Path, config: dict[str, object] | str) -> Path:
    root.mkdir()
    (root / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return root


def _plan(path: Path, **kw: object) -> loader.Plan:
    return loader.plan(EngineSettings(model=str(path), **kw), loader.locate(str(path)))  # type: ignore[arg-type]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(loader.LoadError, match=r"model directory .*/nope does not exist"):
        loader.locate(str(tmp_path / "nope"))


def test_a_file_is_not_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(loader.LoadError, match="is not a directory"):
        loader.locate(str(tmp_path / "weights.bin"))


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(loader.LoadError, match=r"has no config\.json: not a Hugging Face model directory"):
        _plan(tmp_path)


def test_unreadable_config(tmp_path: Path) -> None:
    path = _model_dir(tmp_path / "m", "{not json")
    with pytest.raises(loader.LoadError, match=r"cannot read .*config.json"):
        _plan(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2, "n_embd": 64}
    with pytest.raises(loader.LoadError) as e:
        _plan(_model_dir(tmp_path / "gpt2", config))
    message = str(e.value)
    assert message.startswith("unsupported architecture GPT2LMHeadModel")
    assert "Qwen2ForCausalLM" in message and "BertModel" in message and "vLLM" in message


def test_model_too_large_for_memory(tmp_path: Path) -> None:
    path = _model_dir(tmp_path / "llama70b", LLAMA_70B)
    with pytest.raises(loader.LoadError) as e:
        _plan(path, dtype="float32")
    assert str(e.value).startswith(
        "model too large for memory: LlamaForCausalLM with 70.55B parameters takes"
    )
    assert "available" in str(e.value)


def test_context_longer_than_the_model_allows(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = demo_dir(tmp_path_factory)
    with pytest.raises(loader.LoadError, match="greater than the model's maximum context length"):
        _plan(path, max_model_len=1 << 20)


def test_kv_cache_too_small_for_the_context(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = demo_dir(tmp_path_factory)
    with pytest.raises(loader.LoadError, match="to serve one request of max_model_len 4096 tokens"):
        _plan(path, max_model_len=4096, kv_cache_gib=0.0001)
    # Without an explicit length, the context shrinks to what the cache holds.
    plan = _plan(path, kv_cache_gib=0.0005)
    assert plan.max_model_len == plan.kv_tokens < 4096


def test_sizes_of_the_demo_plan(tmp_path_factory: pytest.TempPathFactory) -> None:
    plan = _plan(demo_dir(tmp_path_factory), max_num_seqs=4)
    assert plan.task == "generate" and plan.architecture == "Qwen2ForCausalLM" and plan.device.type == "cpu"
    # Two layers, two KV heads of 16 dims, keys and values, float32.
    assert plan.kv_bytes_per_token == 2 * 2 * 2 * 16 * 4
    assert plan.kv_tokens == 4 * plan.max_model_len


def test_no_weights(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    copy = tmp_path / "no-weights"
    copy.mkdir()
    for f in demo_dir(tmp_path_factory).iterdir():
        if f.suffix != ".safetensors":
            (copy / f.name).write_bytes(f.read_bytes())
    with pytest.raises(loader.LoadError, match=r"no weights in .*expected \*.safetensors"):
        loader.load_model(_plan(copy))


def test_command_line_reports_the_error_phase(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "fleetgate.engines.embedded",
        "--model",
        "nobody/no-such-model",
        "--port",
        "9",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    # A hub id not in the cache is a download first (its own phase), which fails offline.
    download, line = [x for x in done.stdout.splitlines() if "phase=" in x]
    assert "phase=download model=nobody/no-such-model" in download
    assert line.startswith("ERROR ") and "[fleetgate.embedded] phase=error message=" in line
    assert "nobody/no-such-model does not exist here and could not be fetched" in line
