"""A tiny demo model made on this machine: random weights, a BPE tokenizer trained on local text, and a
real chat template with tools (Qwen2.5's layout), so that a fresh machine with no downloads can serve
something. Its output is meaningless; the server says so.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Qwen2.5's chat template, trimmed to what the demo needs: system prompt, tools in the system turn,
# assistant tool calls as <tool_call> JSON, tool results as <tool_response> in a user turn.
CHAT_TEMPLATE = """\
{%- macro text(c) -%}{%- if c is string -%}{{ c }}{%- elif c -%}{%- for p in c -%}\
{%- if p.type == 'text' -%}{{ p.text }}{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}
{%- if tools -%}
{{- '<|im_start|>system\\n' -}}
{%- if messages[0].role == 'system' -%}{{- text(messages[0].content) -}}\
{%- else -%}{{- 'You are a helpful assistant.' -}}{%- endif -%}
{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}
{%- for tool in tools -%}{{- '\\n' -}}{{- tool | tojson -}}{%- endfor -%}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments \
within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, \
"arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' -}}
{%- elif messages[0].role == 'system' -%}
{{- '<|im_start|>system\\n' + text(messages[0].content) + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'system' and loop.first -%}
{%- elif m.role == 'assistant' and m.tool_calls -%}
{{- '<|im_start|>assistant' -}}{%- if m.content -%}{{- '\\n' + text(m.content) -}}{%- endif -%}
{%- for call in m.tool_calls -%}{%- set f = call.function if call.function is defined else call -%}
{{- '\\n<tool_call>\\n{"name": "' + f.name + '", "arguments": ' -}}
{%- if f.arguments is string -%}{{- f.arguments -}}{%- else -%}{{- f.arguments | tojson -}}{%- endif -%}
{{- '}\\n</tool_call>' -}}
{%- endfor -%}
{{- '<|im_end|>\\n' -}}
{%- elif m.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
{{- '\\n<tool_response>\\n' + text(m.content) + '\\n</tool_response>' -}}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}
{%- else -%}
{{- '<|im_start|>' + m.role + '\\n' + text(m.content) + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Plain added tokens, as in Qwen2.5: they decode to text, so the tool-call parser sees them.
MARKUP = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
VOCAB_SIZE = 4096
CORPUS_BYTES = 3 << 20
DEMO_NAME = "fleetgate-demo"
NOTICE = "DEMO MODEL: random weights, output is meaningless. Pass --model DIR to serve a real model."


def default_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fleetgate" / "demo-model"


def _corpus(limit: int) -> Iterator[str]:
    """Python's own standard library sources: text every machine with Python has, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        total += len(text)
        yield text
        if total >= limit:
            return


def _train_tokenizer(out: Path) -> int:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(MARKUP),
        min_frequency=2,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(CORPUS_BYTES), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP])
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return int(tok.get_vocab_size(with_added_tokens=True))


def create(out: Path) -> Path:
    """Write the demo model directory (a few MB, a few seconds); the caller checks it is not there yet."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    vocab = _train_tokenizer(tmp)
    # Qwen2's layout at a size where one CPU decode step costs about a millisecond.
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=SPECIAL.index("<|endoftext|>"),
        eos_token_id=SPECIAL.index("<|im_end|>"),
        dtype="float32",
    )
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp, safe_serialization=True)
    eos = [SPECIAL.index("<|im_end|>"), SPECIAL.index("<|endoftext|>")]
    (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}, indent=2))
    (tmp / "DEMO.txt").write_text(NOTICE + "\n")
    # Renamed into place whole, so a crash never leaves a half-written model that looks complete.
    tmp.rename(out)
    return out


def ensure(path: Path | None) -> Path:
    out = path or default_dir()
    if not (out / "config.json").is_file():
        print(f"creating the demo model in {out} (first run only)", file=sys.stderr, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        create(out)
    return out
