"""The embedded engine serving the demo model, through the real openai SDK over real sockets.

One engine for the whole session, in this process (uvicorn on a thread, the engine on its own thread), on
an ephemeral port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import uvicorn
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolParam,
)
from openai.types.chat.completion_create_params import ResponseFormat

from fleetgate.engines.embedded import demo, loader
from fleetgate.engines.embedded.server import EmbeddedServer, build
from fleetgate.engines.embedded.settings import EngineSettings
from tests.conftest import free_port

MODEL = "demo"
MAX_MODEL_LEN = 1024
TRAVEL_TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "search_hotels",
            "description": "find hotels",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "enum": ["Tainan", "Kyoto", "Lisbon"]},
                    "nights": {"type": "integer", "minimum": 1, "maximum": 14},
                    "note": {"type": "string", "maxLength": 12},
                },
                "required": ["city", "nights"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "plan_itinerary",
            "parameters": {
                "type": "object",
                "properties": {
                    "days": {"type": "integer", "minimum": 1, "maximum": 5},
                    "slow": {"type": "boolean"},
                },
                "required": ["days", "slow"],
            },
        },
    },
]


def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model, made once per session and shared by every embedded test module."""
    return demo.ensure(tmp_path_factory.getbasetemp() / "embedded-demo-model")


class Running:
    def __init__(self, url: str, server: EmbeddedServer) -> None:
        self.url = url
        self.server = server

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics").text


@contextlib.contextmanager
def serving(path: Path, **options: Any) -> Iterator[Running]:
    """An engine for `path` on an ephemeral port, in this process (uvicorn and the engine on threads)."""
    port = free_port()
    settings = EngineSettings(model=str(path), served_model_names=[MODEL], port=port, **options)
    plan = loader.plan(settings, path)
    server = build(settings, plan, loader.load_model(plan), loader.load_tokenizer(path))
    uv = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "engine server did not start"
        time.sleep(0.01)
    try:
        yield Running(f"http://127.0.0.1:{port}", server)
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with serving(demo_dir(tmp_path_factory), max_num_seqs=16, max_model_len=MAX_MODEL_LEN) as running:
        yield running


@pytest.fixture
def client(engine: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def aclient(engine: Running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)


def _histogram_counts(text: str, name: str) -> dict[str, float]:
    return {
        le: float(v)
        for le, v in re.findall(rf'^{re.escape(name)}_bucket{{[^}}]*le="([^"]+)"}} (\S+)$', text, re.M)
    }


def _sample(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{{[^}}]*{re.escape(labels)}[^}}]*}} (\S+)$", text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Plan two days in Tainan."}]


def test_models_and_health(engine: Running, client: openai.OpenAI) -> None:
    assert httpx.get(f"{engine.url}/health").status_code == 200
    (m,) = client.models.list().data
    assert m.id == MODEL and m.owned_by == "vllm" and m.model_extra and m.model_extra["max_model_len"] == 1024


def test_chat_and_usage(engine: Running, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=12, extra_body={"ignore_eos": True}
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length" and r.usage is not None
    tokenized = httpx.post(f"{engine.url}/tokenize", json={"model": MODEL, "messages": USER}).json()
    assert r.usage.prompt_tokens == tokenized["count"] > 5
    assert r.usage.completion_tokens == 12


def test_completions_text_and_token_prompts(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="def main():", max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "length" and r.usage and r.usage.completion_tokens == 6
    r = client.completions.create(
        model=MODEL, prompt=[[10, 11, 12], [13, 14]], max_tokens=3, n=2, temperature=0
    )
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.usage and r.usage.prompt_tokens == 5
    # Greedy: the n copies of one prompt agree.
    by_index = {c.index: c.text for c in r.choices}
    assert by_index[0] == by_index[1] and by_index[2] == by_index[3]


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=10, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens == 10
    assert chunks[-2].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    again = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    streamed_greedy = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=10, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed_greedy) == again.choices[0].message.content
    )
    assert text  # random weights still produce visible text


async def test_async_n_streams_every_choice(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=7, n=3, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    finished: dict[int, str | None] = {}
    usage = None
    async for chunk in stream:
        for c in chunk.choices:
            if c.finish_reason:
                finished[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert finished == {0: "length", 1: "length", 2: "length"}
    assert usage is not None and usage.completion_tokens == 21


def test_seeded_requests_repeat(client: openai.OpenAI) -> None:
    def run(seed: int) -> list[str]:
        r = client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=16, n=2, seed=seed, temperature=1.0, top_p=0.9,
            extra_body={"top_k": 50},
        )  # fmt: skip
        return [c.message.content or "" for c in sorted(r.choices, key=lambda c: c.index)]

    first = run(7)
    assert run(7) == first
    assert first[0] != first[1]  # choice i draws with seed + i, as vLLM
    assert run(8) != first


async def test_seeded_request_repeats_inside_a_busy_batch(aclient: openai.AsyncOpenAI) -> None:
    async def one(seed: int | None) -> str:
        r = await aclient.chat.completions.create(model=MODEL, messages=USER, max_tokens=16, seed=seed)
        return r.choices[0].message.content or ""

    alone = await one(11)
    crowd = await asyncio.gather(*(one(None) for _ in range(6)), one(11))
    assert crowd[-1] == alone


def test_stop_strings_end_the_answer(client: openai.OpenAI) -> None:
    def ask(stop: list[str] | None) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=40, seed=3, stop=stop, extra_body={"ignore_eos": True}
        )

    full = ask(None).choices[0].message.content or ""
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert len(stop) == 2 and stop.strip()
    choice = ask([stop, "\x00never"]).choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra and choice.model_extra["stop_reason"] == stop
    assert choice.message.content == full[: full.index(stop)]
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=40,
        seed=3,
        stop=stop,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[: full.index(stop)]


def test_request_arriving_mid_decode_is_served_before_the_first_finishes(engine: Running) -> None:
    """A long stream runs; a second request starts after its first token and finishes while it still runs."""
    client = openai.OpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)
    first_token = threading.Event()
    long_done = threading.Event()
    long_tokens: list[str] = []

    def long_request() -> None:
        stream = client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=900, stream=True, extra_body={"ignore_eos": True}
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                long_tokens.append(chunk.choices[0].delta.content)
                first_token.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                long_done.set()

    t = threading.Thread(target=long_request)
    t.start()
    assert first_token.wait(30)
    during = engine.metrics()
    short = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, stream=True, extra_body={"ignore_eos": True}
    )
    got_first = False
    for chunk in short:
        if chunk.choices and chunk.choices[0].delta.content and not got_first:
            got_first = True
            assert not long_done.is_set(), "the short request waited for the long one"
    assert got_first and not long_done.is_set()
    t.join(60)
    assert long_done.is_set()
    # While the long request ran: it was running, and its blocks were in use.
    assert _sample(during, "vllm:num_requests_running") >= 1
    assert _sample(during, "vllm:kv_cache_usage_perc") > 0
    # And some engine steps decoded more than one sequence in one forward pass.
    counts = _histogram_counts(engine.metrics(), "fleetgate_engine_step_sequences")
    assert counts["+Inf"] > counts["1.0"]


async def test_concurrent_requests_share_steps(engine: Running, aclient: openai.AsyncOpenAI) -> None:
    before = _histogram_counts(engine.metrics(), "fleetgate_engine_step_sequences")
    await asyncio.gather(
        *(
            aclient.completions.create(
                model=MODEL, prompt=f"q{i}", max_tokens=30, extra_body={"ignore_eos": True}
            )
            for i in range(8)
        )
    )
    after = _histogram_counts(engine.metrics(), "fleetgate_engine_step_sequences")
    # Steps with 5..8 sequences happened: eight requests were decoded together.
    assert after["8.0"] - after["4.0"] > before["8.0"] - before["4.0"]


def test_forced_tool_call_arguments_validate(client: openai.OpenAI) -> None:
    choices: list[ChatCompletionToolChoiceOptionParam] = [
        "required",
        {"type": "function", "function": {"name": "plan_itinerary"}},
    ]
    for choice in choices:
        r = client.chat.completions.create(
            model=MODEL, messages=USER, tools=TRAVEL_TOOLS, tool_choice=choice, max_tokens=120, seed=1
        )
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.tool_calls, c
        names = []
        for call in c.message.tool_calls:
            assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
            tool = next(t for t in TRAVEL_TOOLS if t["function"]["name"] == call.function.name)
            jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
            names.append(call.function.name)
        if isinstance(choice, dict):
            assert names == ["plan_itinerary"]


async def test_streamed_tool_call(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=MODEL, messages=USER, tools=TRAVEL_TOOLS, tool_choice="required", max_tokens=120, seed=2,
        stream=True, parallel_tool_calls=False,
    )  # fmt: skip
    name = args = call_id = None
    arguments = ""
    finish = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or ():
            assert call.index == 0
            if call.function and call.function.name:
                name, call_id = call.function.name, call.id
                assert args is None, "the name comes before the arguments"
            if call.function and call.function.arguments:
                args = arguments = arguments + call.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and call_id and call_id.startswith("chatcmpl-tool-")
    tool = next(t for t in TRAVEL_TOOLS if t["function"]["name"] == name)
    jsonschema.validate(json.loads(arguments), tool["function"]["parameters"])


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 16},
            "days": {"type": "integer", "minimum": 1, "maximum": 9},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["food", "temple"]}, "maxItems": 3},
        },
        "required": ["city", "days", "tags"],
    }
    constrained: ResponseFormat = {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}}
    for seed in (1, 2):
        r = client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=200, seed=seed, response_format=constrained
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)
    # Free-form JSON: a random-weight model rarely closes a string it opened, so some answers run out of
    # tokens; every answer is an object so far, and every one that ends is a whole object.
    r = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=60, n=6, seed=4, response_format={"type": "json_object"}
    )
    ended = [c for c in r.choices if c.finish_reason == "stop"]
    assert ended and all(c.message.content and c.message.content.startswith("{") for c in r.choices)
    assert all(isinstance(json.loads(c.message.content or ""), dict) for c in ended)


def test_prefix_cache_reuses_a_long_shared_prompt(engine: Running, client: openai.OpenAI) -> None:
    system: ChatCompletionMessageParam = {"role": "system", "content": "You are a travel agent. " * 40}
    before = _sample(engine.metrics(), "vllm:prefix_cache_hits_total")
    for question in ("Tainan?", "Kyoto?"):
        client.chat.completions.create(
            model=MODEL, messages=[system, {"role": "user", "content": question}], max_tokens=2
        )
    assert _sample(engine.metrics(), "vllm:prefix_cache_hits_total") - before >= 128


def test_metrics_speak_vllm(engine: Running) -> None:
    text = engine.metrics()
    for family in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:request_success_total",
        "vllm:generation_tokens_total",
    ):
        assert re.search(rf'^{re.escape(family)}{{engine="0"', text, re.M) or family in text, family
    assert _sample(text, "vllm:engine_sleep_state", 'sleep_state="awake"') == 1
    assert _sample(text, "vllm:time_to_first_token_seconds_count") > 0
    assert _sample(text, "vllm:cache_config_info", 'block_size="16"') == 1


def test_errors_have_vllm_shapes(engine: Running, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 1500}], max_tokens=10
        )
    assert "This model's maximum context length is 1024 tokens" in str(e.value)
    assert e.value.body and e.value.body["param"] == "input_tokens"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="max_tokens=5000 cannot be greater than max_model_len"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=5000)
    with pytest.raises(openai.NotFoundError, match=re.escape("The model `gpt-4o` does not exist.")):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.BadRequestError, match="top_p must be in"):
        client.chat.completions.create(model=MODEL, messages=USER, top_p=0)
    with pytest.raises(openai.BadRequestError, match="has not been passed in `tools`"):
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            tools=TRAVEL_TOOLS,
            tool_choice={"type": "function", "function": {"name": "x"}},
        )
    with pytest.raises(
        openai.BadRequestError, match="logprobs is not supported by fleetgate's embedded engine"
    ):
        client.chat.completions.create(model=MODEL, messages=USER, logprobs=True, max_tokens=2)
    r = httpx.post(f"{engine.url}/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "Bad Request"


async def test_preemption_when_the_kv_cache_runs_out(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Six long answers in a cache for one and a half: sequences are preempted, recomputed, and all end."""
    # 24 blocks of 16 tokens = 384 slots; each request needs ~20 prompt + 200 output tokens.
    with serving(
        demo_dir(tmp_path_factory), max_num_seqs=8, max_model_len=256, kv_cache_gib=384 * 512 / 2**30
    ) as small:
        assert small.server.engine is not None and small.server.engine.kv.num_blocks == 24
        client = openai.AsyncOpenAI(base_url=f"{small.url}/v1", api_key="unused", max_retries=0)
        answers = await asyncio.gather(
            *(
                client.completions.create(
                    model=MODEL, prompt=f"request {i} " * 5, max_tokens=200, extra_body={"ignore_eos": True}
                )
                for i in range(6)
            )
        )
        assert [a.usage.completion_tokens if a.usage else 0 for a in answers] == [200] * 6
        text = small.metrics()
        assert _sample(text, "vllm:num_preemptions_total") > 0
        assert _sample(text, "vllm:kv_cache_usage_perc") == 0
