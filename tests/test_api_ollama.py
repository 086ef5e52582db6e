"""The Ollama API on the gateway, in front of simulators, driven by the real `ollama` client with the calls of
the travel guide (`chat`, `generate`, `embed`, `list`, `show`, `ps`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from tests.conftest import GatewayProcess, SimProcess, spawn_sim
from tests.fleets import gateway

MODEL = "llama-8b"
TAGGED = "qwen2.5:7b-instruct"
ASK = [{"role": "user", "content": "What is the weather in Tainan?"}]
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather for a city.",
        "parameters": {
            "type": "object",
            # The ollama client's Tool model keeps a property's type, description and enum only.
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SimProcess]]:
    d = tmp_path_factory.mktemp("sims")
    procs = [
        spawn_sim(d, "--served-model-name", MODEL, "--time-scale", "20", "--enable-auto-tool-choice",
                  "--tool-call-parser", "hermes"),
        spawn_sim(d, "--profile", "cpu-minilm-embed", "--served-model-name", "minilm"),
        spawn_sim(d, "--served-model-name", "crashy", "--fault-crash-rate", "1",
                  "--fault-crash-after-tokens", "3"),
    ]  # fmt: skip
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sims: list[SimProcess]) -> Iterator[GatewayProcess]:
    config = f"""
pools:
  - name: main
    models: [{MODEL}, {{alias: "{TAGGED}"}}]
    endpoints: [{sims[0].url}]
  - name: embed
    models: [minilm]
    endpoints: [{sims[1].url}]
  - name: crashy
    models: [crashy]
    endpoints: [{sims[2].url}]
"""
    with gateway(tmp_path_factory.mktemp("gw"), config) as g:
        yield g


@pytest.fixture
def client(gw: GatewayProcess) -> ollama.Client:
    return ollama.Client(host=gw.url)


def test_chat_with_a_tagged_model_name(client: ollama.Client) -> None:
    r = client.chat(model=TAGGED, messages=ASK, options={"num_predict": 8, "temperature": 0.2})
    assert r.model == TAGGED and r.done and r.done_reason == "length"
    assert r.message.role == "assistant" and r.message.content
    assert r.eval_count == 8 and r.prompt_eval_count and r.prompt_eval_count > 0
    assert r.total_duration and r.total_duration > 0


def test_chat_streams_ndjson_lines(client: ollama.Client, gw: GatewayProcess) -> None:
    parts = list(client.chat(model=f"{MODEL}:latest", messages=ASK, options={"num_predict": 6}, stream=True))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content or "" for p in parts[:-1])
    assert parts[-1].eval_count == 6 and parts[-1].done_reason == "length"
    with httpx.stream("POST", f"{gw.url}/api/chat", json={"model": MODEL, "messages": ASK}) as r:
        # Ollama streams unless told not to.
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and all(not line["done"] for line in lines[:-1])


def test_generate_plain_streamed_and_load(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="Tainan is", system="Be brief.", options={"num_predict": 5})
    assert r.response and r.done and r.eval_count == 5
    parts = list(client.generate(model=MODEL, prompt="Tainan is", options={"num_predict": 4}, stream=True))
    assert parts[-1].done and parts[-1].eval_count == 4 and "".join(p.response or "" for p in parts)
    raw = client.generate(model=MODEL, prompt="<|im_start|>user\nhi", raw=True, options={"num_predict": 3})
    assert raw.eval_count == 3
    # Nothing to generate: Ollama's "load the model" answer, without an upstream call.
    loaded = client.generate(model=MODEL)
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


def test_tool_call_round_trip(client: ollama.Client) -> None:
    r = client.chat(model=MODEL, messages=ASK, tools=[WEATHER])
    calls = r.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    args = dict(calls[0].function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    history: list[Any] = [
        *ASK,
        r.message,
        {"role": "tool", "content": "Sunny, 31C", "tool_name": "get_weather"},
    ]
    answer = client.chat(model=MODEL, messages=history, tools=[WEATHER], options={"num_predict": 10})
    assert answer.message.content and not answer.message.tool_calls
    streamed = list(client.chat(model=MODEL, messages=ASK, tools=[WEATHER], stream=True))
    called = [c for p in streamed for c in p.message.tool_calls or ()]
    assert [c.function.name for c in called] == ["get_weather"] and streamed[-1].done


def test_json_formats(client: ollama.Client) -> None:
    loose = client.chat(model=MODEL, messages=ASK, format="json", options={"num_predict": 200})
    assert isinstance(json.loads(loose.message.content or ""), dict)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city", "days"]}  # fmt: skip
    strict = client.chat(model=MODEL, messages=ASK, format=schema, options={"num_predict": 200})
    jsonschema.validate(json.loads(strict.message.content or ""), schema)


def test_embeddings_both_routes(client: ollama.Client) -> None:
    r = client.embed(model="minilm", input=["night markets in Tainan", "Cloud Run pricing"])
    assert r.model == "minilm" and len(r.embeddings) == 2 and len(r.embeddings[0]) > 8
    assert r.prompt_eval_count and r.prompt_eval_count > 0
    legacy = client.embeddings(model="minilm", prompt="night markets in Tainan")
    assert list(legacy.embedding) == pytest.approx(list(r.embeddings[0]))


def test_model_listings(client: ollama.Client, gw: GatewayProcess) -> None:
    names = {m.model for m in client.list().models}
    assert {f"{MODEL}:latest", TAGGED, "minilm:latest"} <= names
    shown = client.show(TAGGED)
    assert shown.capabilities is not None and "tools" in shown.capabilities
    assert {m.model for m in client.ps().models} >= {TAGGED, f"{MODEL}:latest"}
    assert httpx.get(f"{gw.url}/api/version").json()["version"].count(".") == 2
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("nope:7b")
    assert missing.value.status_code == 404


def test_errors_in_ollamas_shape(client: ollama.Client, gw: GatewayProcess) -> None:
    with pytest.raises(ollama.ResponseError) as nf:
        client.chat(model="nope", messages=ASK)
    assert nf.value.status_code == 404 and "nope" in nf.value.error
    bad_bodies = [
        b"{not json",
        b"[1]",
        b"{}",
        b'{"model": "llama-8b", "messages": "hi"}',
        b'{"model": "llama-8b", "messages": [{"role": "user", "content": 3}]}',
        b'{"model": "llama-8b", "messages": [], "options": []}',
        b'{"model": "llama-8b", "messages": [{"role": "user", "content": "x"}], "options": {"top_k": []}}',
        b'{"model": "llama-8b", "messages": [{"role": "user", "content": "x"}], "format": "yaml"}',
        b'{"model": "llama-8b", "messages": [{"role": "user", "content": "x"}], "tools": [{"function": 1}]}',
    ]
    for body in bad_bodies:
        r = httpx.post(f"{gw.url}/api/chat", content=body)
        assert r.status_code == 400, (body, r.text)
        assert isinstance(r.json()["error"], str)
    others = [
        ("/api/generate", b'{"model": "llama-8b", "prompt": 5}'),
        ("/api/embed", b'{"model": "minilm"}'),
        ("/api/embeddings", b'{"model": "minilm", "prompt": [1]}'),
        ("/api/show", b"{}"),
    ]
    for path, body in others:
        r = httpx.post(f"{gw.url}{path}", content=body)
        assert r.status_code == 400 and isinstance(r.json()["error"], str), (path, r.text)


def test_upstream_failure_mid_stream_is_an_error_line(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError):
        for _ in client.chat(model="crashy", messages=ASK, stream=True, options={"num_predict": 50}):
            pass
