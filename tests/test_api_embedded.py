"""The Anthropic and Ollama APIs through the gateway in front of the embedded engine (the demo model): the
drop-in for `ollama serve` in development, and a translated upstream that has no `/v1/messages` of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import jsonschema
import ollama
import pytest
from anthropic.types import MessageParam, ToolParam

from tests.conftest import GatewayProcess
from tests.fleets import gateway
from tests.test_embedded_engine import MODEL, Running, demo_dir, serving

ASK: list[MessageParam] = [{"role": "user", "content": "Plan two days in Tainan."}]
HOTELS: ToolParam = {
    "name": "search_hotels",
    "description": "find hotels",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Tainan", "Kyoto", "Lisbon"]},
            "nights": {"type": "integer", "minimum": 1, "maximum": 14},
        },
        "required": ["city", "nights"],
    },
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with serving(demo_dir(tmp_path_factory), max_num_seqs=8, max_model_len=1024) as running:
        yield running


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, engine: Running) -> Iterator[GatewayProcess]:
    config = f"""
pools:
  - name: demo
    models: [{MODEL}, {{alias: "demo:tiny"}}, {{alias: claude-haiku-4-5}}]
    endpoints: [{engine.url}]
"""
    with gateway(tmp_path_factory.mktemp("gw"), config) as g:
        yield g


def test_anthropic_messages_plain_streamed_and_tool(gw: GatewayProcess) -> None:
    c = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    m = c.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=ASK)
    assert m.model == "claude-haiku-4-5" and m.usage.output_tokens > 0 and m.usage.input_tokens > 0
    with c.messages.stream(model=MODEL, max_tokens=8, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    # A random-weight model may end at once: then there is no text block, and no text streamed.
    assert "".join(b.text for b in final.content if b.type == "text") == text
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")
    forced = c.messages.create(
        model=MODEL, max_tokens=120, messages=ASK, tools=[HOTELS],
        tool_choice={"type": "tool", "name": "search_hotels"},
    )  # fmt: skip
    block = next(b for b in forced.content if b.type == "tool_use")
    assert forced.stop_reason == "tool_use" and block.name == "search_hotels"
    jsonschema.validate(block.input, HOTELS["input_schema"])


def test_ollama_chat_plain_streamed_and_schema(gw: GatewayProcess) -> None:
    c = ollama.Client(host=gw.url)
    r = c.chat(model="demo:tiny", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 6})
    assert r.done and r.eval_count and 0 < r.eval_count <= 6 and r.model == "demo:tiny"
    parts = list(c.chat(model="demo:tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
                        options={"num_predict": 6}))  # fmt: skip
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Tainan", "Kyoto"]}},
              "required": ["city"]}  # fmt: skip
    shaped = c.chat(model=MODEL, messages=[{"role": "user", "content": "a city"}], format=schema,
                    options={"num_predict": 60})  # fmt: skip
    jsonschema.validate(json.loads(shaped.message.content or ""), schema)
