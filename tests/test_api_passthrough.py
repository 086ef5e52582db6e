"""Routes passed through unchanged: vLLM's rerank, score, pooling and classify (routed by model like
embeddings), and the Responses API with function tools (the openai SDK as the client, the simulator
answering as vLLM does)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import FunctionToolParam, ResponseInputParam

from tests.conftest import GatewayProcess, SimProcess, spawn_sim
from tests.fleets import gateway

MODEL = "llama-8b"
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["city", "days"],
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SimProcess]]:
    d = tmp_path_factory.mktemp("sims")
    procs = [
        spawn_sim(d, "--served-model-name", MODEL, "--time-scale", "20", "--enable-auto-tool-choice",
                  "--tool-call-parser", "hermes"),
        spawn_sim(d, "--profile", "cpu-minilm-embed", "--served-model-name", "reranker"),
    ]  # fmt: skip
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sims: list[SimProcess]) -> Iterator[GatewayProcess]:
    config = f"""
pools:
  - name: chat
    models: [{MODEL}]
    endpoints: [{sims[0].url}]
  - name: rank
    models: [reranker, {{alias: bge-reranker}}]
    endpoints: [{sims[1].url}]
"""
    with gateway(tmp_path_factory.mktemp("gw"), config) as g:
        yield g


@pytest.fixture
def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_routed_by_model(gw: GatewayProcess, path: str) -> None:
    docs = ["night markets in Tainan", "Cloud Run pricing", "Tainan beef soup"]
    r = httpx.post(
        f"{gw.url}{path}", json={"model": "bge-reranker", "query": "Tainan food", "documents": docs}
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2]
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert results[-1]["document"]["text"] == "Cloud Run pricing"


def test_score_pooling_and_classify(gw: GatewayProcess) -> None:
    score = httpx.post(
        f"{gw.url}/score",
        json={"model": "reranker", "text_1": "Tainan food", "text_2": ["Tainan food", "GPUs"]},
    ).json()
    assert score["data"][0]["score"] > score["data"][1]["score"]
    pooled = httpx.post(f"{gw.url}/pooling", json={"model": "reranker", "input": ["a", "b"]}).json()
    assert [d["object"] for d in pooled["data"]] == ["pooling", "pooling"]
    classes = httpx.post(f"{gw.url}/classify", json={"model": "reranker", "input": "Tainan"}).json()
    assert classes["data"][0]["num_classes"] == 2 and sum(classes["data"][0]["probs"]) == pytest.approx(1.0)


def test_pass_through_errors(gw: GatewayProcess) -> None:
    unknown = httpx.post(f"{gw.url}/v1/rerank", json={"model": "nope", "query": "q", "documents": ["d"]})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "NotFoundError"
    invalid = httpx.post(f"{gw.url}/v1/rerank", json={"model": "reranker", "query": 3})
    assert invalid.status_code == 400 and invalid.json()["error"]["code"] == 400


def test_responses_function_call_round_trip(client: openai.OpenAI) -> None:
    ask: ResponseInputParam = [{"role": "user", "content": "What is the weather in Tainan?"}]
    r = client.responses.create(model=MODEL, input=ask, tools=[WEATHER])
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), dict(WEATHER["parameters"] or {}))
    assert r.tools and r.tools[0].type == "function"
    history: ResponseInputParam = [
        *ask,
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 31C"},
    ]
    answer = client.responses.create(model=MODEL, input=history, tools=[WEATHER], max_output_tokens=10)
    assert answer.output[0].type == "message" and answer.output_text


def test_responses_tool_choice_none_and_required(client: openai.OpenAI) -> None:
    none = client.responses.create(
        model=MODEL, input="Weather in Tainan?", tools=[WEATHER], tool_choice="none", max_output_tokens=5
    )
    assert none.output[0].type == "message"
    # "required" calls a tool even with a tool's result in hand.
    history: ResponseInputParam = [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
    ]
    required = client.responses.create(model=MODEL, input=history, tools=[WEATHER], tool_choice="required")
    assert required.output[0].type == "function_call"


def test_responses_function_call_streamed(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model=MODEL, input="Weather in Tainan?", tools=[WEATHER], stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == deltas and json.loads(deltas)
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output[0].type == "function_call"
    assert final.response.output[0].arguments == deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_openai_agents_sdk_runs_a_tool_loop(gw: GatewayProcess) -> None:
    """openai-agents, whose default model is the Responses API: the model calls the tool, the SDK runs it and
    sends its output back, and the next turn answers in text (plain and streamed runs)."""
    import agents

    agents.set_tracing_disabled(True)
    asked: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"Sunny in {city}"

    async def run() -> tuple[object, object]:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        model = agents.OpenAIResponsesModel(model=MODEL, openai_client=client)
        agent = agents.Agent(
            name="travel", instructions="Help plan trips.", tools=[get_weather], model=model,
            # The SDK raises on an answer cut at max_tokens (`incomplete`); the simulator's answers end by
            # themselves after a log-normal length (median 160 tokens), far under this.
            model_settings=agents.ModelSettings(max_tokens=6000),
        )  # fmt: skip
        plain = await agents.Runner.run(agent, "Weather in Tainan?")
        streamed = agents.Runner.run_streamed(agent, "Weather in Tainan?")
        async for _ in streamed.stream_events():
            pass
        return plain.final_output, streamed.final_output

    plain, streamed = asyncio.run(run())
    assert len(asked) == 2
    assert isinstance(plain, str) and plain and isinstance(streamed, str) and streamed
