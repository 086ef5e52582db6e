"""The engine's parts on their own: sampling, stop strings over real tokens, grammars, the demo model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from fleetgate.engines.embedded.grammar import Grammars, Masks, strict
from fleetgate.engines.embedded.output import TextOutput
from fleetgate.engines.embedded.prompts import render_chat
from fleetgate.engines.embedded.sampling import Row, Sampler, SamplingParams
from fleetgate.protocol import BadRequestError
from tests.test_embedded_engine import demo_dir

CPU = torch.device("cpu")
EOS = 2


def _logits(rows: int, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn((rows, vocab), generator=torch.Generator().manual_seed(seed))


def _row(**kw: object) -> Row:
    return Row(SamplingParams(max_tokens=10, **kw), [], None)  # type: ignore[arg-type]


def test_greedy_rows_take_the_argmax_next_to_sampled_rows() -> None:
    logits = _logits(4)
    rows = [_row(temperature=0.0), _row(), _row(top_k=1), _row(top_p=1e-9)]
    got = Sampler(frozenset({EOS}), 0, CPU).sample(logits.clone(), rows)
    best = logits.argmax(dim=-1).tolist()
    assert got[0] == best[0] and got[2] == best[2] and got[3] == best[3]


def test_a_seeded_row_draws_the_same_whatever_its_neighbours() -> None:
    logits = _logits(3)

    def draw(neighbours_seed: int) -> int:
        seeded = Row(SamplingParams(max_tokens=5), [], torch.Generator().manual_seed(42))
        rows = [_row(), seeded, _row()]
        return Sampler(frozenset(), neighbours_seed, CPU).sample(logits.clone(), rows)[1]

    assert {draw(s) for s in range(8)} == {draw(0)}


def test_draws_follow_the_distribution_within_top_k() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 5.0]]).repeat(4000, 1)
    logits[:, 4] = float("-inf")  # as a grammar mask leaves it
    got = Sampler(frozenset(), 1, CPU).sample(logits, [_row(top_k=3) for _ in range(4000)])
    counts = torch.bincount(torch.tensor(got), minlength=5).tolist()
    assert counts[3] == counts[4] == 0
    expected = torch.tensor([2.0, 1.0, 0.0]).softmax(dim=0) * 4000
    assert all(abs(c - e) < 150 for c, e in zip(counts[:3], expected.tolist(), strict=True))


def test_masks_min_tokens_and_penalties() -> None:
    logits = torch.zeros((3, 8))
    logits[:, EOS] = 10.0
    allowed = torch.zeros(8, dtype=torch.bool)
    allowed[5] = True
    rows = [
        Row(SamplingParams(max_tokens=4), [], None, allowed=allowed),
        Row(SamplingParams(max_tokens=4, temperature=0.0), [], None, block_eos=True),
        Row(SamplingParams(max_tokens=4, temperature=0.0, frequency_penalty=20.0), [EOS, EOS], None),
    ]
    got = Sampler(frozenset({EOS}), 0, CPU).sample(logits, rows)
    assert got[0] == 5 and got[1] != EOS and got[2] != EOS


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    return AutoTokenizer.from_pretrained(demo_dir(tmp_path_factory))


def _run(tok: object, text: str, stops: tuple[str, ...]) -> tuple[list[str], str | None]:
    out = TextOutput(tok.backend_tokenizer, stops)  # type: ignore[attr-defined]
    pieces = []
    for t in tok.encode(text, add_special_tokens=False):  # type: ignore[attr-defined]
        pieces.append(out.add(t))
        if out.stop_hit:
            return pieces, out.stop_hit
    pieces.append(out.flush())
    return pieces, None


def test_text_output_detokenizes_incrementally(tokenizer: object) -> None:
    text = "def café():\n    return '日本'  # ünïcode"
    pieces, hit = _run(tokenizer, text, ())
    assert "".join(pieces) == text and hit is None


def test_stop_string_is_cut_and_never_leaks(tokenizer: object) -> None:
    text = "import os\nimport sys\nprint(os.getcwd())"
    pieces, hit = _run(tokenizer, text, ("sys\npr", "never"))
    assert hit == "sys\npr"
    assert "".join(pieces) == "import os\nimport "
    assert all("sys\npr" not in "".join(pieces[: i + 1]) for i in range(len(pieces)))


def test_strict_closes_objects_that_list_properties() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}},
        "$defs": {"t": {"type": "object", "properties": {}, "additionalProperties": True}},
    }
    out = strict(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["$defs"]["t"]["additionalProperties"] is True
    assert "additionalProperties" not in schema


def _complete(grammars: Grammars, grammar: str, tok: object, steps: int = 400) -> str:
    """Walk the grammar to its end: EOS as soon as it is allowed, else the middle allowed token."""
    matcher = grammars.matcher(grammar)
    masks = Masks(grammars.vocab_size)
    out: list[int] = []
    for _ in range(steps):
        allowed = masks.allowed(matcher).nonzero().flatten().tolist()
        token = EOS if EOS in allowed else allowed[len(allowed) // 2]
        assert matcher.consume_token(token)
        if token != EOS:
            out.append(token)
        if matcher.is_stopped():
            break
    assert matcher.is_stopped()
    return str(tok.decode(out))  # type: ignore[attr-defined]


def test_tool_call_grammar_yields_a_hermes_call(tokenizer: object) -> None:
    grammars = Grammars(tokenizer, 4096, [EOS])
    tools = [
        {"type": "function", "function": {"name": "pick", "parameters": {"type": "object", "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 3}}, "required": ["n"]}}},
    ]  # fmt: skip
    text = _complete(grammars, grammars.tool_calls(tools, several=False), tokenizer)
    assert text.startswith('<tool_call>\n{"name": "pick", "arguments": {"n": ') and text.endswith(
        "}\n</tool_call>"
    )
    body = json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    assert body["name"] == "pick" and body["arguments"]["n"] in (1, 2, 3)


def test_bad_schemas_are_400s(tokenizer: object) -> None:
    grammars = Grammars(tokenizer, 4096, [EOS])
    with pytest.raises(BadRequestError, match="invalid grammar"):
        grammars.matcher(
            str(grammars.response_format({"type": "json_schema", "json_schema": {"schema": {"type": "x"}}}))
        )
    with pytest.raises(BadRequestError, match="must be a JSON Schema object"):
        grammars.response_format({"type": "json_schema", "json_schema": {"name": "n"}})
    with pytest.raises(BadRequestError, match="not supported"):
        grammars.response_format({"type": "yaml"})
    assert grammars.response_format({"type": "text"}) is None


def test_demo_model_directory(tmp_path_factory: pytest.TempPathFactory) -> None:
    path: Path = demo_dir(tmp_path_factory)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "DEMO.txt"} <= {
        f.name for f in path.iterdir()
    }
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["vocab_size"] == 4096
    tok = AutoTokenizer.from_pretrained(path)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    prompt = str(tok.decode(render_chat(tok, messages, tools)))
    assert "<tools>" in prompt and '"name": "f"' in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>' in prompt
    assert "<tool_response>\ndone\n</tool_response>" in prompt and "user\nhi<|im_end|>" in prompt
