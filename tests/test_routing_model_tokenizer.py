"""Prefix routing with a model's own tokenizer and chat template: the gateway's keys are the engine's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from fleetgate.engines.embedded import demo
from fleetgate.engines.embedded.prompts import message_dict, render_chat
from fleetgate.fleet.prefix_keys import token_keys
from fleetgate.routing.prompt import PromptHasher
from fleetgate.worker.requests import ChatMessage

SYSTEM = {"role": "system", "content": "You answer travel questions for a booking site. " * 20}
HISTORY = [
    SYSTEM,
    {"role": "user", "content": "Two days in Tainan?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "find_hotels", "arguments": '{"city": "Tainan", "nights": 2}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "Hotel A, Hotel B"},
    {"role": "user", "content": [{"type": "text", "text": "Which is quieter?"}]},
]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.ensure(tmp_path_factory.getbasetemp() / "embedded-demo-model")


def test_chat_keys_equal_the_blocks_of_the_ids_the_engine_renders(model_dir: Path) -> None:
    hasher = PromptHasher(str(model_dir))
    info = hasher.info("chat", {"messages": HISTORY}, None)
    assert info is not None
    # What the engine's server renders: messages validated as requests, then normalised for the template.
    served = [message_dict(ChatMessage.model_validate(m)) for m in HISTORY]
    engine_ids = render_chat(AutoTokenizer.from_pretrained(model_dir), served, None)
    assert info.tokens == len(engine_ids) and info.keys == token_keys(engine_ids, 16)
    assert info.session is not None  # an assistant spoke before the last user turn


def test_a_shared_system_prompt_shares_leading_keys(model_dir: Path) -> None:
    hasher = PromptHasher(str(model_dir))
    a = hasher.info("chat", {"messages": [SYSTEM, {"role": "user", "content": "Tainan?"}]}, None)
    b = hasher.info("chat", {"messages": [SYSTEM, {"role": "user", "content": "Kyoto?"}]}, None)
    assert a is not None and b is not None and len(a.keys) > 10
    shared = sum(1 for x, y in zip(a.keys, b.keys, strict=False) if x == y)
    assert len(a.keys) - 2 <= shared < len(a.keys)
    text = hasher.info("completions", {"prompt": SYSTEM["content"]}, None)
    assert text is not None and text.keys  # completions prompts use the same tokenizer


def test_a_path_without_a_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        PromptHasher(str(tmp_path / "nowhere"))


def test_the_gateway_refuses_an_unusable_tokenizer_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "listen: {host: 127.0.0.1, port: 0}\nadmin: {host: 127.0.0.1, port: 0}\npools:\n"
        "  - {name: p, models: [m], endpoints: [http://127.0.0.1:9], routing: {tokenizer: ./no-such-model}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "fleetgate", "gateway", "--config", str(fleet)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "routing.tokenizer './no-such-model'" in done.stderr and "Traceback" not in done.stderr
