"""Properties the simulator must keep for any request, checked through the real openai SDK.

Token accounting (what is streamed is what is billed), stop strings, `n`, seeds, logprobs, tokenization, and
vLLM's errors for bad input: a 400 or 404 with vLLM's error object, never a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolParam

from tests.conftest import SimProcess, spawn_sim

MODEL = "llama-8b"

ENGLISH: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a travel assistant."},
    {"role": "user", "content": "Plan two days in Kyoto: temples in the morning, food markets at night."},
]
CHINESE: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "你是一個旅遊助理。"},
    {"role": "user", "content": "找台南兩天一夜的影片，包含美食、古蹟和夜市。"},
]
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "search_segments",
            "description": "search travel video segments",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "city": {"type": "string"},
                    "limit": {"type": "integer"},
                },
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "plan_itinerary",
            "description": "plan a trip",
            "parameters": {
                "type": "object",
                "properties": {
                    "segments": {"type": "array", "items": {"type": "integer"}},
                    "days": {"type": "integer"},
                },
                "required": ["segments", "days"],
            },
        },
    },
]
PROMPTS = {"english": ENGLISH, "chinese": CHINESE}
IGNORE_EOS = {"ignore_eos": True}


# ---- simulators --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    flags = ("--served-model-name", MODEL, "--time-scale", "20", "--seed", "7")
    proc = spawn_sim(
        tmp_path_factory.mktemp("inv"), *flags, "--enable-auto-tool-choice", "--tool-call-parser", "hermes"
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def small_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """A 2048-token context, so that prompts over it stay cheap to send."""
    flags = ("--served-model-name", MODEL, "--time-scale", "20", "--max-model-len", "2048")
    proc = spawn_sim(tmp_path_factory.mktemp("small"), *flags)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(sim: SimProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def tokenize(sim: SimProcess, **body: Any) -> int:
    resp = httpx.post(sim.url + "/tokenize", json={"model": MODEL, **body}, timeout=10)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["count"] == len(out["tokens"])
    return cast(int, out["count"])


# ---- streamed chat, gathered -------------------------------------------------------------------------------
@dataclass
class ChatStream:
    roles: dict[int, int] = field(default_factory=dict)  # index -> role chunks
    tokens: dict[int, int] = field(default_factory=dict)  # index -> chunks after the role chunk
    text: dict[int, str] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    stop_reason: dict[int, Any] = field(default_factory=dict)
    logprobs: dict[int, list[Any]] = field(default_factory=dict)
    usage: openai.types.CompletionUsage | None = None
    chunks_after_usage: int = 0


def stream_chat(client: openai.OpenAI, **kwargs: Any) -> ChatStream:
    out = ChatStream()
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kwargs):
        if out.usage is not None:
            out.chunks_after_usage += 1
        if chunk.usage is not None:
            assert chunk.choices == []
            out.usage = chunk.usage
        for choice in chunk.choices:
            i = choice.index
            assert i not in out.finish, f"choice {i} got a chunk after its finish chunk"
            if choice.delta.role is not None:
                assert choice.delta.role == "assistant"
                assert i not in out.tokens, "the role chunk comes first"
                out.roles[i] = out.roles.get(i, 0) + 1
                continue
            out.tokens[i] = out.tokens.get(i, 0) + 1
            out.text[i] = out.text.get(i, "") + (choice.delta.content or "")
            if choice.logprobs is not None and choice.logprobs.content is not None:
                out.logprobs.setdefault(i, []).extend(choice.logprobs.content)
            if choice.finish_reason is not None:
                out.finish[i] = choice.finish_reason
                out.stop_reason[i] = (choice.model_extra or {}).get("stop_reason")
    return out


@dataclass
class CompletionStream:
    tokens: dict[int, int] = field(default_factory=dict)
    text: dict[int, str] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    usage: openai.types.CompletionUsage | None = None


def stream_completion(client: openai.OpenAI, **kwargs: Any) -> CompletionStream:
    out = CompletionStream()
    for chunk in client.completions.create(model=MODEL, stream=True, **kwargs):
        if chunk.usage is not None:
            assert chunk.choices == []
            out.usage = chunk.usage
        for choice in chunk.choices:
            i = choice.index
            assert i not in out.finish
            out.tokens[i] = out.tokens.get(i, 0) + 1
            out.text[i] = out.text.get(i, "") + choice.text
            if choice.finish_reason is not None:
                out.finish[i] = choice.finish_reason
    return out


# ---- token accounting --------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_tokens", [1, 7, 40])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_ignore_eos_chat_streams_exactly_max_tokens(
    client: openai.OpenAI, prompt: str, max_tokens: int
) -> None:
    s = stream_chat(
        client,
        messages=PROMPTS[prompt],
        max_tokens=max_tokens,
        stream_options={"include_usage": True},
        extra_body=IGNORE_EOS,
    )
    assert s.roles == {0: 1}
    assert s.tokens == {0: max_tokens}
    assert s.finish == {0: "length"}
    assert s.usage is not None and s.usage.completion_tokens == max_tokens
    assert s.usage.total_tokens == s.usage.prompt_tokens + max_tokens
    assert s.chunks_after_usage == 0


@pytest.mark.parametrize("max_tokens", [1, 9, 33])
@pytest.mark.parametrize("prompt", ["Cloud Run is a ", "台南的夜市有"])
def test_ignore_eos_completion_streams_exactly_max_tokens(
    client: openai.OpenAI, prompt: str, max_tokens: int
) -> None:
    s = stream_completion(
        client,
        prompt=prompt,
        max_tokens=max_tokens,
        stream_options={"include_usage": True},
        extra_body=IGNORE_EOS,
    )
    assert s.tokens == {0: max_tokens}
    assert s.finish == {0: "length"}
    assert s.usage is not None and s.usage.completion_tokens == max_tokens


@pytest.mark.parametrize("seed", range(4))
def test_natural_end_bills_what_was_streamed(client: openai.OpenAI, seed: int) -> None:
    max_tokens = 300
    s = stream_chat(
        client, messages=ENGLISH, max_tokens=max_tokens, seed=seed, stream_options={"include_usage": True}
    )
    assert s.usage is not None
    assert s.tokens[0] == s.usage.completion_tokens
    assert s.finish[0] == ("length" if s.tokens[0] == max_tokens else "stop")
    full = client.chat.completions.create(model=MODEL, messages=ENGLISH, max_tokens=max_tokens, seed=seed)
    assert full.choices[0].message.content == s.text[0]
    assert full.usage is not None and full.usage.completion_tokens == s.usage.completion_tokens


def test_max_completion_tokens_bounds_the_answer(client: openai.OpenAI) -> None:
    s = stream_chat(
        client,
        messages=ENGLISH,
        max_completion_tokens=4,
        stream_options={"include_usage": True},
        extra_body=IGNORE_EOS,
    )
    assert s.tokens == {0: 4} and s.finish == {0: "length"}
    assert s.usage is not None and s.usage.completion_tokens == 4


def test_n2_chat_choices_and_usage(sim: SimProcess, client: openai.OpenAI) -> None:
    prompt_tokens = tokenize(sim, messages=ENGLISH)
    resp = client.chat.completions.create(
        model=MODEL, messages=ENGLISH, max_tokens=6, n=2, extra_body=IGNORE_EOS
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in resp.choices)
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens == prompt_tokens


def test_n2_chat_stream_interleaves_two_choices(client: openai.OpenAI) -> None:
    s = stream_chat(
        client,
        messages=CHINESE,
        max_tokens=5,
        n=2,
        stream_options={"include_usage": True},
        extra_body=IGNORE_EOS,
    )
    assert s.roles == {0: 1, 1: 1}
    assert s.tokens == {0: 5, 1: 5}
    assert s.finish == {0: "length", 1: "length"}
    assert s.usage is not None and s.usage.completion_tokens == 10


def test_n2_completion_counts_the_prompt_once(sim: SimProcess, client: openai.OpenAI) -> None:
    # vLLM adds each prompt's length once however many choices it has (serving_completion: num_prompt_tokens).
    prompt = "Cloud Run is a serverless platform for"
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, n=2, extra_body=IGNORE_EOS)
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    assert resp.usage.prompt_tokens == tokenize(sim, prompt=prompt)


# ---- stop strings ------------------------------------------------------------------------------------------
STOPS = [(" the", 0), (" the", 1), (".", 2), (".", 3)]


@pytest.mark.parametrize(("stop", "seed"), STOPS)
def test_stop_string_ends_the_stream(client: openai.OpenAI, stop: str, seed: int) -> None:
    s = stream_chat(client, messages=ENGLISH, max_tokens=200, seed=seed, stop=[stop], extra_body=IGNORE_EOS)
    assert s.finish == {0: "stop"}, "the Zipf text emits ' the' and '.' well within 200 tokens"
    assert stop not in s.text[0]
    assert s.stop_reason == {0: stop}
    assert s.tokens[0] < 200


@pytest.mark.parametrize(("stop", "seed"), STOPS)
def test_stop_string_usage_counts_streamed_tokens(client: openai.OpenAI, stop: str, seed: int) -> None:
    s = stream_chat(
        client,
        messages=ENGLISH,
        max_tokens=200,
        seed=seed,
        stop=[stop],
        stream_options={"include_usage": True},
        extra_body=IGNORE_EOS,
    )
    assert s.usage is not None
    assert s.usage.completion_tokens == s.tokens[0], (
        "usage must bill the tokens up to the stop string, no more"
    )


@pytest.mark.parametrize(("stop", "seed"), STOPS)
def test_stop_string_non_stream_matches_stream(client: openai.OpenAI, stop: str, seed: int) -> None:
    s = stream_chat(client, messages=ENGLISH, max_tokens=200, seed=seed, stop=[stop], extra_body=IGNORE_EOS)
    resp = client.chat.completions.create(
        model=MODEL, messages=ENGLISH, max_tokens=200, seed=seed, stop=[stop], extra_body=IGNORE_EOS
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == s.text[0]
    assert (choice.model_extra or {}).get("stop_reason") == stop


@pytest.mark.parametrize(("stop", "seed"), STOPS)
def test_stop_string_non_stream_usage_ends_at_the_stop(client: openai.OpenAI, stop: str, seed: int) -> None:
    s = stream_chat(client, messages=ENGLISH, max_tokens=200, seed=seed, stop=[stop], extra_body=IGNORE_EOS)
    resp = client.chat.completions.create(
        model=MODEL, messages=ENGLISH, max_tokens=200, seed=seed, stop=[stop], extra_body=IGNORE_EOS
    )
    assert resp.usage is not None
    assert resp.usage.completion_tokens == s.tokens[0], "generation ends at the stop string, so does billing"


@pytest.mark.parametrize("seed", [0, 5])
def test_stop_string_in_completions(client: openai.OpenAI, seed: int) -> None:
    prompt = "Things to do in Kyoto:"
    s = stream_completion(client, prompt=prompt, max_tokens=200, seed=seed, stop=".", extra_body=IGNORE_EOS)
    resp = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=200, seed=seed, stop=".", extra_body=IGNORE_EOS
    )
    assert s.finish == {0: "stop"} and resp.choices[0].finish_reason == "stop"
    assert "." not in s.text[0]
    assert resp.choices[0].text == s.text[0]


# ---- prompts and tokenization ------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_tokenize_matches_chat_prompt_tokens(sim: SimProcess, client: openai.OpenAI, prompt: str) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=PROMPTS[prompt], max_tokens=2)
    assert resp.usage is not None and resp.usage.prompt_tokens == tokenize(sim, messages=PROMPTS[prompt])


def test_tokenize_matches_tool_prompt_tokens(sim: SimProcess, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=CHINESE, tools=TOOLS, tool_choice="required")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == tokenize(sim, messages=CHINESE, tools=TOOLS)
    assert resp.usage.prompt_tokens > tokenize(sim, messages=CHINESE), (
        "tool signatures are part of the prompt"
    )
    (call,) = resp.choices[0].message.tool_calls or []
    assert call.type == "function"
    schema = {t["function"]["name"]: cast(dict[str, Any], t["function"].get("parameters")) for t in TOOLS}
    schema = schema[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)


@pytest.mark.parametrize("prompt", ["Cloud Run is a ", "台南的夜市有什麼好吃的？", "a" * 300])
def test_tokenize_matches_completion_prompt_tokens(
    sim: SimProcess, client: openai.OpenAI, prompt: str
) -> None:
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    assert resp.usage is not None and resp.usage.prompt_tokens == tokenize(sim, prompt=prompt)


def test_token_id_prompts(client: openai.OpenAI) -> None:
    one = client.completions.create(model=MODEL, prompt=[1000, 2000, 3000, 4000, 5000], max_tokens=3)
    assert one.usage is not None and one.usage.prompt_tokens == 5
    batch = client.completions.create(
        model=MODEL, prompt=[[1000, 2000, 3000], [7] * 40], max_tokens=3, extra_body=IGNORE_EOS
    )
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.usage is not None and batch.usage.prompt_tokens == 43 and batch.usage.completion_tokens == 6


def test_out_of_vocabulary_token_id_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=[1, 2, 10**9], max_tokens=3)
    assert _error(info.value)["param"] == "prompt"


# ---- seeds -------------------------------------------------------------------------------------------------
def test_same_seed_same_text(client: openai.OpenAI) -> None:
    def chat(seed: int) -> list[str | None]:
        r = client.chat.completions.create(
            model=MODEL, messages=CHINESE, max_tokens=20, n=2, seed=seed, extra_body=IGNORE_EOS
        )
        return [c.message.content for c in r.choices]

    first = chat(11)
    assert chat(11) == first
    assert first[0] != first[1], "each choice draws from its own seed"
    assert chat(12) != first

    def complete(seed: int) -> str:
        r = client.completions.create(model=MODEL, prompt="Cloud Run is a ", max_tokens=20, seed=seed)
        return r.choices[0].text

    assert complete(3) == complete(3)
    assert complete(3) != complete(4)


# ---- logprobs ----------------------------------------------------------------------------------------------
def test_chat_logprobs_shape(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=ENGLISH, max_tokens=6, logprobs=True, top_logprobs=3, extra_body=IGNORE_EOS
    )
    choice = resp.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert len(entries) == 6
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0
        assert e.bytes == list(e.token.encode())
        assert len(e.top_logprobs) == 3
        assert all(t.logprob <= 0 and t.bytes == list(t.token.encode()) for t in e.top_logprobs)
    plain = client.chat.completions.create(model=MODEL, messages=ENGLISH, max_tokens=2, logprobs=True)
    assert plain.choices[0].logprobs is not None and plain.choices[0].logprobs.content is not None
    assert all(e.top_logprobs == [] for e in plain.choices[0].logprobs.content)


def test_chat_stream_logprobs_one_entry_per_token(client: openai.OpenAI) -> None:
    s = stream_chat(
        client, messages=ENGLISH, max_tokens=5, logprobs=True, top_logprobs=2, extra_body=IGNORE_EOS
    )
    assert len(s.logprobs[0]) == 5
    assert "".join(e.token for e in s.logprobs[0]) == s.text[0]
    assert all(len(e.top_logprobs) == 2 for e in s.logprobs[0])


def test_completion_logprobs_shape(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL, prompt="Cloud Run is a ", max_tokens=7, logprobs=2, extra_body=IGNORE_EOS
    )
    choice = resp.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert lp.text_offset is not None and lp.top_logprobs is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == len(lp.top_logprobs) == 7
    assert "".join(lp.tokens) == choice.text
    offsets = [0]
    for t in lp.tokens[:-1]:
        offsets.append(offsets[-1] + len(t))
    assert lp.text_offset == offsets
    assert all(x is not None and x <= 0 for x in lp.token_logprobs)
    assert all(top is not None and lp.tokens[i] in top for i, top in enumerate(lp.top_logprobs))


def test_completion_stream_logprobs_offsets_run_on(client: openai.OpenAI) -> None:
    text = ""
    offsets: list[int] = []
    for chunk in client.completions.create(
        model=MODEL, prompt="Cloud Run is a ", max_tokens=6, logprobs=1, stream=True, extra_body=IGNORE_EOS
    ):
        for choice in chunk.choices:
            lp = choice.logprobs
            assert lp is not None and lp.tokens is not None and lp.text_offset is not None
            assert "".join(lp.tokens) == choice.text
            assert lp.text_offset[0] == len(text), "offsets count from the start of the completion"
            offsets += lp.text_offset
            text += choice.text
    assert len(offsets) == 6 and offsets == sorted(offsets)


@pytest.mark.parametrize("k", [2, 4])
def test_completion_top_logprobs_count(client: openai.OpenAI, k: int) -> None:
    # vLLM returns the sampled token plus the top k: k or k + 1 entries (the sampled one may be a top one).
    resp = client.completions.create(
        model=MODEL, prompt="Cloud Run is a ", max_tokens=4, logprobs=k, extra_body=IGNORE_EOS
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.top_logprobs is not None
    assert all(top is not None and k <= len(top) <= k + 1 for top in lp.top_logprobs), lp.top_logprobs


# ---- errors ------------------------------------------------------------------------------------------------
def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    assert body["code"] == exc.status_code and isinstance(body["message"], str) and body["message"]
    return body


def _raw_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text[:300]
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"}
    err = cast(dict[str, Any], body["error"])
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


def test_malformed_json_is_a_400(sim: SimProcess, client: openai.OpenAI) -> None:
    raw = httpx.post(
        sim.url + "/v1/chat/completions", content=b'{"model": "x", "messages": [', headers=_JSON, timeout=10
    )
    err = _raw_error(raw, 400)
    assert err["type"] == "Bad Request" and err["param"] == "body.28"
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", cast_to=ChatCompletion, content=b"{nope", options={"headers": _JSON})
    assert _error(info.value)["type"] == "Bad Request"


_JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": "x"}, "body.max_tokens"),
        ({"messages": "hello"}, "body.messages"),
        ({"messages": [1, 2]}, "body.messages"),
        ({"temperature": "hot"}, "body.temperature"),
        ({"n": [2]}, "body.n"),
        ({"stop": 5}, "body.stop.str"),
        ({"model": 5}, "body.model"),
    ],
)
def test_wrong_types_are_request_validation_errors(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ENGLISH, extra_body=extra)
    err = _error(info.value)
    assert err["type"] == "Bad Request"
    assert err["param"].startswith(param)
    assert err["message"].startswith(("1 validation error:", "2 validation errors:"))


def test_unknown_model_is_a_404_everywhere(sim: SimProcess, client: openai.OpenAI) -> None:
    def chat() -> object:
        return client.chat.completions.create(model="nope", messages=ENGLISH, max_tokens=2)

    def completion() -> object:
        return client.completions.create(model="nope", prompt="hi", max_tokens=2)

    def response() -> object:
        return client.responses.create(model="nope", input="hi", max_output_tokens=2)

    for call in (chat, completion, response):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        err = _error(info.value)
        assert err == {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    raw = httpx.post(sim.url + "/tokenize", json={"model": "nope", "prompt": "hi"}, timeout=10)
    assert _raw_error(raw, 404)["param"] == "model"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"n": 0}, "n"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**7}, "max_tokens"),
    ],
)
def test_bad_sampling_values_are_400(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ENGLISH, **kwargs)
    err = _error(info.value)
    assert err["type"] == "BadRequestError" and err["param"] == param
    assert f"(parameter={param}, value=" in err["message"]


def test_prompt_over_the_context_is_a_400(small_sim: SimProcess) -> None:
    with openai.OpenAI(base_url=small_sim.url + "/v1", api_key="x", max_retries=0) as client:
        long_chat: list[ChatCompletionMessageParam] = [{"role": "user", "content": "temple " * 2100}]
        n = tokenize(small_sim, messages=long_chat)
        assert n > 2048
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=long_chat)
        err = _error(info.value)
        assert err["param"] == "input_tokens"
        assert "maximum context length is 2048 tokens" in err["message"] and f"value={n})" in err["message"]
        # A prompt that fits, with more output asked for than the rest of the context: also vLLM's 400.
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=MODEL, prompt=[9] * 2000, max_tokens=100)
        err = _error(info.value)
        assert err["param"] == "input_tokens" and "for a total of 2100 tokens" in err["message"]
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=MODEL, prompt=[9] * 10, max_tokens=2049)
        assert _error(info.value)["param"] == "max_tokens"
        # Exactly full is fine.
        ok = client.completions.create(model=MODEL, prompt=[9] * 2000, max_tokens=48, extra_body=IGNORE_EOS)
        assert ok.usage is not None and ok.usage.total_tokens == 2048


@pytest.mark.parametrize(
    "body",
    [
        # tool_choice naming a function with something that is not an object
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": "search_segments"}},
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": 5}},
        # an assistant turn whose tool calls are malformed
        {"messages": [*ENGLISH, {"role": "assistant", "tool_calls": [{"function": "search_segments"}]}]},
        {"messages": [*ENGLISH, {"role": "assistant", "tool_calls": 5}]},
    ],
    ids=[
        "tool_choice-function-str",
        "tool_choice-function-int",
        "tool_calls-function-str",
        "tool_calls-int",
    ],
)
def test_malformed_tool_fields_are_400_not_500(sim: SimProcess, body: dict[str, Any]) -> None:
    payload = {"model": MODEL, "messages": ENGLISH, "max_tokens": 4, **body}
    resp = httpx.post(sim.url + "/v1/chat/completions", json=payload, timeout=10)
    _raw_error(resp, 400)


# ---- fuzz --------------------------------------------------------------------------------------------------
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 6),
    st.floats(-3, 3, allow_nan=False),
    st.text(max_size=6),
)
_JUNK = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=3),
    st.dictionaries(
        st.sampled_from(["type", "function", "name", "arguments", "schema", "x"]), _SCALARS, max_size=3
    ),
)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), _JUNK)},
    optional={
        "content": st.one_of(st.text(max_size=30), _JUNK),
        "tool_calls": st.one_of(
            _JUNK,
            st.lists(
                st.fixed_dictionaries(
                    {"function": st.one_of(_JUNK, st.fixed_dictionaries({"name": st.text(max_size=5)}))}
                ),
                max_size=2,
            ),
        ),
    },
)
_TOOL_CHOICE = st.one_of(
    st.sampled_from(["auto", "none", "required"]),
    _JUNK,
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.one_of(
                _JUNK, st.fixed_dictionaries({"name": st.sampled_from(["search_segments", "x"])})
            ),
        }
    ),
)
_RESPONSE_FORMAT = st.one_of(
    _JUNK,
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"])}),
    st.fixed_dictionaries(
        {
            "type": st.just("json_schema"),
            "json_schema": st.one_of(_JUNK, st.fixed_dictionaries({"schema": _JUNK})),
        }
    ),
)
# Each field's wild values: edge cases of the right type mixed with values of the wrong type.
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.one_of(st.sampled_from([MODEL, "nope", ""]), _JUNK),
    "messages": st.one_of(st.lists(_MESSAGE, min_size=1, max_size=3), _JUNK),
    "max_tokens": st.one_of(st.integers(-2, 12), _JUNK),
    "max_completion_tokens": st.one_of(st.integers(-2, 12), _JUNK),
    "temperature": st.one_of(st.floats(-2, 2, allow_nan=False), _JUNK),
    "top_p": st.one_of(st.floats(-1, 2, allow_nan=False), _JUNK),
    "n": st.one_of(st.integers(-1, 3), _JUNK),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=2), _JUNK),
    "stream": st.one_of(st.booleans(), _JUNK),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": _SCALARS}), _JUNK),
    "tools": st.one_of(st.just(TOOLS), _JUNK),
    "tool_choice": _TOOL_CHOICE,
    "response_format": _RESPONSE_FORMAT,
    "logprobs": st.one_of(st.booleans(), _JUNK),
    "top_logprobs": st.one_of(st.integers(-1, 4), _JUNK),
    "seed": st.one_of(st.integers(-5, 5), _JUNK),
}
_BASE_BODY = {"model": MODEL, "messages": ENGLISH, "max_tokens": 8}


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid chat body with one to three fields set to wild values."""
    fields = draw(st.lists(st.sampled_from(sorted(_FIELDS)), min_size=1, max_size=3, unique=True))
    body: dict[str, Any] = dict(_BASE_BODY)
    for name in fields:
        body[name] = draw(_FIELDS[name])
    return body


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(body=chat_bodies())
def test_fuzzed_chat_bodies_never_5xx(sim: SimProcess, body: dict[str, Any]) -> None:
    resp = httpx.post(sim.url + "/v1/chat/completions", json=body, timeout=20)
    assert resp.status_code in (200, 400, 404), f"{resp.status_code} {resp.text[:300]!r} for {body!r}"
    if resp.status_code != 200:
        _raw_error(resp, resp.status_code)
    elif resp.headers["content-type"].startswith("text/event-stream"):
        assert resp.text.endswith("data: [DONE]\n\n")
        for event in resp.text.split("\n\n")[:-2]:
            assert event.startswith("data: ") and "choices" in json.loads(event[len("data: ") :]), event
    else:
        out = resp.json()
        assert out["object"] == "chat.completion"
        _check_usage(out, body)


def _check_usage(out: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    usage = out["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    choices: Sequence[Mapping[str, Any]] = out["choices"]
    assert choices and [c["index"] for c in choices] == list(range(len(choices)))
    assert all(c["finish_reason"] in ("stop", "length", "tool_calls") for c in choices)


# ---- constrained answers whose tokens share ids with prompt words ------------------------------------------
# The stand-in tokenizer hashes pieces into the vocabulary, so two pieces can share an id (" abiub" and "42"
# do). Once a prompt has shown " abiub", a constrained answer holding 42 must still read 42, not " abiub": a
# CI run got `{"city":"weekend","days": near}` back for a schema that asks for an integer.
_CLASH: list[ChatCompletionMessageParam] = [{"role": "user", "content": "abiub abiub: how many days?"}]
_FORTY_TWO: dict[str, Any] = {"type": "object", "properties": {"days": {"const": 42}}, "required": ["days"]}


@pytest.mark.parametrize("stream", [False, True])
def test_json_answer_reads_as_built_when_a_prompt_piece_shares_its_ids(
    client: openai.OpenAI, stream: bool
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "days", "schema": _FORTY_TWO}}
    if stream:
        text = stream_chat(client, messages=_CLASH, response_format=fmt, max_tokens=50).text[0]
    else:
        resp = client.chat.completions.create(
            model=MODEL, messages=_CLASH, response_format=cast(Any, fmt), max_tokens=50
        )
        text = resp.choices[0].message.content or ""
    assert json.loads(text) == {"days": 42}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_arguments_read_as_built_when_a_prompt_piece_shares_its_ids(
    client: openai.OpenAI, stream: bool
) -> None:
    tool: ChatCompletionToolParam = {
        "type": "function",
        "function": {"name": "plan", "parameters": _FORTY_TWO},
    }
    ask: dict[str, Any] = {"model": MODEL, "messages": _CLASH, "tools": [tool], "tool_choice": "required"}
    if stream:
        args = "".join(
            call.function.arguments or ""
            for chunk in client.chat.completions.create(**ask, stream=True)
            for choice in chunk.choices
            for call in choice.delta.tool_calls or ()
            if call.function is not None
        )
    else:
        (call,) = client.chat.completions.create(**ask).choices[0].message.tool_calls or []
        args = call.function.arguments
    assert json.loads(args) == {"days": 42}
