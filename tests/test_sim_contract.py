"""Replay every request recorded from a real vLLM 0.26 (tests/data/contract*.json) against the simulator.

Values differ (ids, sampled text, timestamps, token counts of a different tokenizer), so bodies are compared
by shape: the same keys with the same JSON types, recursively. Streams are compared by framing and by the
sequence of chunk kinds. Errors are deterministic, so their bodies must match the recording exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.conftest import SimProcess, spawn_sim

DATA = Path(__file__).parent / "data"
CONTRACT: dict[str, dict[str, Any]] = json.loads((DATA / "contract.json").read_text())
TOOLS: dict[str, dict[str, Any]] = json.loads((DATA / "contract_tools.json").read_text())

# `chat_json_schema` is left out on purpose: its recorded 500 was a defect of the recording server (it lacked
# lm-format-enforcer), not vLLM behaviour (see ../shared/vllm-reference/README.md). Structured output is
# covered by contract_tools.json's `json_schema` cases instead.
PLAIN_CASES = [name for name in CONTRACT if name != "chat_json_schema"]
TOOL_CASES = list(TOOLS)
ALL_CASES = [("contract", n) for n in PLAIN_CASES] + [("tools", n) for n in TOOL_CASES]
SHORTENED_PROMPT = "[7] * 200000  (shortened here)"
# The tool-call answers the recording could not show (random weights never closed the JSON): the simulator
# completes them, so these bodies carry parsed `tool_calls` where the recording has raw `<tool_call>` text.
COMPLETED_TOOL_CALLS = {"tools_required", "tools_named"}
TOOL_STREAMS = {"tools_required_stream", "tools_named_stream"}


# ---- simulators --------------------------------------------------------------------------------------------
BASE_FLAGS = ("--served-model-name", "llama-8b", "--time-scale", "20", "--seed", "7")
TOOL_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


@pytest.fixture(scope="module")
def plain_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    sim = spawn_sim(tmp_path_factory.mktemp("plain"), *BASE_FLAGS)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def tools_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    # Dev mode only adds routes (`reset_prefix_cache` is one of the recorded tool-server cases).
    sim = spawn_sim(
        tmp_path_factory.mktemp("tools"), *BASE_FLAGS, *TOOL_FLAGS, env={"VLLM_SERVER_DEV_MODE": "1"}
    )
    yield sim
    sim.stop()


def _sim_for(request: pytest.FixtureRequest, recording: str) -> SimProcess:
    return cast(SimProcess, request.getfixturevalue("plain_sim" if recording == "contract" else "tools_sim"))


def _case(recording: str, name: str) -> dict[str, Any]:
    return (CONTRACT if recording == "contract" else TOOLS)[name]


def _client(sim: SimProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)


# ---- shapes ------------------------------------------------------------------------------------------------
def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "object"
    raise TypeError(f"not a JSON value: {v!r}")


def _fewest(tries: list[list[str]]) -> list[str]:
    """The closest of several failed matches (the one with fewest differences)."""
    return sorted(tries, key=len)[0]


def shape_diff(rec: Any, sim: Any, path: str = "$") -> list[str]:
    """Where `sim` differs from `rec` in keys or JSON types (values are ignored)."""
    if _type_name(rec) != _type_name(sim):
        return [f"{path}: recorded {_type_name(rec)}, simulated {_type_name(sim)} ({sim!r:.80})"]
    if isinstance(rec, dict):
        out: list[str] = []
        if rec.keys() != sim.keys():
            missing, extra = sorted(rec.keys() - sim.keys()), sorted(sim.keys() - rec.keys())
            out.append(f"{path}: keys differ, missing {missing}, extra {extra}")
        for k in rec.keys() & sim.keys():
            out += shape_diff(rec[k], sim[k], f"{path}.{k}")
        return out
    if isinstance(rec, list):
        if not rec:
            return [] if not sim else [f"{path}: recorded an empty list, simulated {len(sim)} items"]
        out = []
        for i, item in enumerate(sim):
            tries = [shape_diff(r, item, f"{path}[{i}]") for r in rec]
            if all(tries):
                out += _fewest(tries)
        return out
    return []


# ---- requests ----------------------------------------------------------------------------------------------
def request_body(case: Mapping[str, Any]) -> Any:
    body = case["request"]["body"]
    if isinstance(body, dict) and body.get("prompt") == SHORTENED_PROMPT:
        body = {**body, "prompt": [7] * 200000}
    return body


def send_raw(sim: SimProcess, case: Mapping[str, Any]) -> httpx.Response:
    body = request_body(case)
    headers: dict[str, str] = {}
    content: bytes | None = None
    if body is not None:
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers["content-type"] = "application/json"
    method, path = case["request"]["method"], case["request"]["path"]
    return httpx.request(method, sim.url + path, content=content, headers=headers, timeout=30)


def recorded_text(case: Mapping[str, Any]) -> str:
    if case["chunks"] is not None:
        return "".join(piece for _, piece in case["chunks"])
    return cast(str, case["body"])


# ---- streams -----------------------------------------------------------------------------------------------
def sse_payloads(text: str) -> list[dict[str, Any]]:
    """The JSON events of a stream, checking vLLM's framing: `data: {json}\\n\\n`, then `data: [DONE]`."""
    assert text.endswith("data: [DONE]\n\n"), f"stream does not end with [DONE]: {text[-200:]!r}"
    events = text.split("\n\n")
    assert events[-1] == "", "stream has bytes after the final blank line"
    events = events[:-1]
    for e in events:
        assert e.startswith("data: "), f"event is not a data line: {e[:120]!r}"
        assert "\n" not in e, f"event spans several lines: {e[:120]!r}"
    assert events[-1] == "data: [DONE]"
    assert "data: [DONE]" not in events[:-1], "[DONE] before the end"
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert all(isinstance(p, dict) for p in payloads)
    return payloads


def chunk_kind(chunk: Mapping[str, Any]) -> str:
    choices = chunk["choices"]
    if not choices:
        return "usage"
    assert len(choices) == 1, "a vLLM chunk carries one choice"
    choice = choices[0]
    if "role" in choice.get("delta", {}):
        return "role"
    return "finish" if choice["finish_reason"] is not None else "delta"


def _tool_shapes(kind: str) -> list[dict[str, Any]]:
    """Chunks of the recorded tool-call streams, the shapes an answer that calls a tool may take."""
    out = []
    for name in sorted(TOOL_STREAMS):
        out += [c for c in sse_payloads(recorded_text(TOOLS[name])) if chunk_kind(c) == kind]
    return out


def compare_stream(rec_text: str, sim_text: str, *, may_call_tools: bool, chat: bool) -> list[dict[str, Any]]:
    rec, sim = sse_payloads(rec_text), sse_payloads(sim_text)
    rec_kinds, sim_kinds = [chunk_kind(c) for c in rec], [chunk_kind(c) for c in sim]
    # The sequence: [role] delta* finish [usage].
    expected_head = ["role"] if chat else []
    assert sim_kinds[: len(expected_head)] == expected_head, (
        f"chat stream must open with the role chunk: {sim_kinds}"
    )
    assert rec_kinds[: len(expected_head)] == expected_head
    tail = ["finish", "usage"] if rec_kinds[-1] == "usage" else ["finish"]
    assert rec_kinds[-len(tail) :] == tail
    assert sim_kinds[-len(tail) :] == tail, f"stream must end with {tail}: {sim_kinds}"
    middle = sim_kinds[len(expected_head) : -len(tail)]
    assert set(middle) <= {"delta"}, f"unexpected chunk kinds inside the stream: {sim_kinds}"
    if "delta" in rec_kinds:
        assert middle, (
            f"the recorded stream carried tokens between role and finish, the simulated none: {sim_text}"
        )
    # Every chunk has the shape of the recorded chunk of its kind.
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for c, k in zip(rec, rec_kinds, strict=True):
        by_kind.setdefault(k, []).append(c)
    if may_call_tools:
        for k in ("delta", "finish"):
            by_kind.setdefault(k, []).extend(_tool_shapes(k))
    for i, (c, k) in enumerate(zip(sim, sim_kinds, strict=True)):
        tries = [shape_diff(r, c, f"chunk[{i}]({k})") for r in by_kind[k]]
        assert not all(tries), _fewest(tries)
    # One id, one object type, one model for the whole stream; the fingerprint only on the last JSON chunk.
    assert len({c["id"] for c in sim}) == 1
    assert {c["object"] for c in sim} == {rec[0]["object"]}
    assert {c["model"] for c in sim} == {rec[0]["model"]}
    assert [i for i, c in enumerate(sim) if "system_fingerprint" in c] == [len(sim) - 1]
    return sim


# ---- the replay --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("recording", "name"), ALL_CASES, ids=[f"{r}:{n}" for r, n in ALL_CASES])
def test_replay_matches_recording(request: pytest.FixtureRequest, recording: str, name: str) -> None:
    case = _case(recording, name)
    sim = _sim_for(request, recording)
    resp = send_raw(sim, case)
    assert resp.status_code == case["status"], resp.text[:500]
    if "headers" in case:
        assert resp.headers.get("content-type") == case["headers"].get("Content-Type")
    if case["chunks"] is not None:
        body = case["request"]["body"]
        may_call_tools = bool(body.get("tools")) and body.get("tool_choice") != "none"
        compare_stream(
            recorded_text(case),
            resp.text,
            may_call_tools=may_call_tools,
            chat="chat" in case["request"]["path"],
        )
        return
    rec_text = recorded_text(case)
    if not rec_text:
        assert resp.content == b""
        return
    rec_body, sim_body = json.loads(rec_text), resp.json()
    if case["status"] >= 400:
        # Errors are deterministic: the simulator answers vLLM's exact words.
        assert sim_body == rec_body
        return
    if name in COMPLETED_TOOL_CALLS:
        # Checked in detail below; here everything but the message must keep the recorded shape.
        rec_body["choices"][0]["message"] = sim_body["choices"][0]["message"]
        rec_body["choices"][0]["finish_reason"] = sim_body["choices"][0]["finish_reason"]
    assert not shape_diff(rec_body, sim_body), shape_diff(rec_body, sim_body)


def test_every_recorded_case_is_replayed() -> None:
    assert set(CONTRACT) - set(PLAIN_CASES) == {"chat_json_schema"}
    assert len(ALL_CASES) == len(CONTRACT) + len(TOOLS) - 1


# ---- tool calls the simulator completes --------------------------------------------------------------------
def _tool_schemas(body: Mapping[str, Any]) -> dict[str, Any]:
    return {t["function"]["name"]: t["function"]["parameters"] for t in body["tools"]}


def _expected_tool(body: Mapping[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    return choice["function"]["name"] if isinstance(choice, dict) else None


@pytest.mark.parametrize("name", sorted(COMPLETED_TOOL_CALLS))
def test_tool_call_is_parsed_with_sdk(tools_sim: SimProcess, name: str) -> None:
    body = TOOLS[name]["request"]["body"]
    recorded = json.loads(TOOLS[name]["body"])["choices"][0]
    # The recording shows what random weights did: raw markup, cut at max_tokens.
    assert recorded["message"]["content"].startswith("<tool_call>") and recorded["finish_reason"] == "length"
    resp = _client(tools_sim).chat.completions.create(**body)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls, "a tool call must come back parsed"
    schemas = _tool_schemas(body)
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("chatcmpl-tool-") and len(call.id) > len("chatcmpl-tool-")
        fn = call.function
        assert fn.name in schemas
        if _expected_tool(body) is not None:
            assert fn.name == _expected_tool(body)
        jsonschema.validate(json.loads(fn.arguments), schemas[fn.name])
    assert resp.usage is not None and resp.usage.completion_tokens <= body["max_tokens"]


@pytest.mark.parametrize("name", sorted(COMPLETED_TOOL_CALLS))
def test_tool_call_message_keeps_recorded_keys(tools_sim: SimProcess, name: str) -> None:
    rec_msg = json.loads(TOOLS[name]["body"])["choices"][0]["message"]
    sim_body = send_raw(tools_sim, TOOLS[name]).json()
    msg = sim_body["choices"][0]["message"]
    assert set(msg) == set(rec_msg) | {"tool_calls"}
    assert msg["content"] is None
    assert not shape_diff(
        {k: v for k, v in rec_msg.items() if k != "content"}, {k: msg[k] for k in rec_msg if k != "content"}
    )
    for call in msg["tool_calls"]:
        assert set(call) == {"id", "type", "function"}
        assert set(call["function"]) == {"name", "arguments"}
        assert isinstance(call["function"]["arguments"], str)


@pytest.mark.parametrize("name", sorted(TOOL_STREAMS))
def test_tool_call_stream_follows_recorded_deltas(tools_sim: SimProcess, name: str) -> None:
    case = TOOLS[name]
    body = case["request"]["body"]
    rec = sse_payloads(recorded_text(case))
    sim = compare_stream(recorded_text(case), send_raw(tools_sim, case).text, may_call_tools=True, chat=True)
    deltas = [c["choices"][0]["delta"] for c in sim[1:-1]]
    assert len(deltas) >= 2, "a name chunk and at least one arguments chunk"
    head = deltas[0]
    assert not shape_diff(rec[1]["choices"][0]["delta"], head)
    assert head["content"] is None
    (call,) = head["tool_calls"]
    assert set(call) == {"id", "type", "index", "function"} and set(call["function"]) == {"name"}
    assert call["type"] == "function" and call["index"] == 0 and call["id"].startswith("chatcmpl-tool-")
    schemas = _tool_schemas(body)
    assert call["function"]["name"] in schemas
    if _expected_tool(body) is not None:
        assert call["function"]["name"] == _expected_tool(body)
    pieces = []
    for d in deltas[1:]:
        assert not shape_diff(rec[2]["choices"][0]["delta"], d)
        assert d["content"] is None
        (part,) = d["tool_calls"]
        assert set(part) == {"index", "function"} and set(part["function"]) == {"arguments"}
        assert part["index"] == 0
        pieces.append(part["function"]["arguments"])
    jsonschema.validate(json.loads("".join(pieces)), schemas[call["function"]["name"]])
    finish = sim[-1]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("name", sorted(TOOL_STREAMS))
def test_tool_call_stream_cut_by_max_tokens_ends_as_recorded(tools_sim: SimProcess, name: str) -> None:
    """Random weights left both recorded streams cut by max_tokens after the call's head: vLLM still ends
    the `required` one as `tool_calls` and the named one as `length` (so does /v1/messages: `tool_use` in
    messages_contract.json's messages_tools_any_stream). 20 tokens stream the head and no whole arguments."""
    rec = sse_payloads(recorded_text(TOOLS[name]))
    # A seed of its own: the simulator's shared generator stays where later tests expect it.
    body = {**TOOLS[name]["request"]["body"], "max_tokens": 20, "seed": 1}
    sim = sse_payloads(httpx.post(tools_sim.url + "/v1/chat/completions", json=body, timeout=30).text)
    heads = [
        c for c in sim if c["choices"] and "id" in (c["choices"][0]["delta"].get("tool_calls") or [{}])[0]
    ]
    assert len(heads) == 1
    assert sim[-1]["choices"][0]["finish_reason"] == rec[-1]["choices"][0]["finish_reason"]
    assert rec[-1]["choices"][0]["finish_reason"] == ("length" if "named" in name else "tool_calls")


async def test_tool_call_stream_with_async_sdk(tools_sim: SimProcess) -> None:
    body = TOOLS["tools_named_stream"]["request"]["body"]
    async with openai.AsyncOpenAI(base_url=tools_sim.url + "/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(**body)
        names: list[str] = []
        ids: list[str] = []
        args: list[str] = []
        reasons: list[str] = []
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.finish_reason is not None:
                    reasons.append(choice.finish_reason)
                for call in choice.delta.tool_calls or ():
                    assert call.index == 0
                    if call.id is not None:
                        ids.append(call.id)
                    if call.function is not None and call.function.name is not None:
                        names.append(call.function.name)
                    if call.function is not None and call.function.arguments is not None:
                        args.append(call.function.arguments)
    assert names == ["plan_itinerary"] and len(ids) == 1
    assert reasons == ["tool_calls"]
    jsonschema.validate(json.loads("".join(args)), _tool_schemas(body)["plan_itinerary"])


# ---- structured output -------------------------------------------------------------------------------------
def _response_schema(body: Mapping[str, Any]) -> dict[str, Any]:
    fmt = body["response_format"]
    return (
        cast(dict[str, Any], fmt["json_schema"]["schema"])
        if fmt["type"] == "json_schema"
        else {"type": "object"}
    )


@pytest.mark.parametrize("name", ["json_schema", "json_object"])
def test_structured_output_is_valid_json(tools_sim: SimProcess, name: str) -> None:
    body = TOOLS[name]["request"]["body"]
    resp = _client(tools_sim).chat.completions.create(**body)
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None
    jsonschema.validate(json.loads(choice.message.content), _response_schema(body))


@pytest.mark.parametrize("name", ["json_schema_stream", "json_object_stream"])
def test_structured_output_stream_is_valid_json(tools_sim: SimProcess, name: str) -> None:
    case = TOOLS[name]
    body = case["request"]["body"]
    sim = compare_stream(recorded_text(case), send_raw(tools_sim, case).text, may_call_tools=False, chat=True)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in sim if c["choices"])
    jsonschema.validate(json.loads(text), _response_schema(body))
    assert sim[-1]["choices"][0]["finish_reason"] == "stop"


def test_schemas_that_are_no_json_schema_are_400s_where_vllm_compiles_them(tools_sim: SimProcess) -> None:
    """A forced tool's parameters and response_format are compiled into a grammar (a 400 when they break the
    metaschema); under tool_choice auto nothing is compiled and the model answers in text. The simulator
    crashed (a plain-text 500) on `"properties": null`, found by tests/test_gateway_schemathesis.py."""
    client = _client(tools_sim)
    bad = {"type": "object", "properties": None}
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": bad}}]
    ask: Any = {"model": "llama-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    forced: list[Any] = ["required", {"type": "function", "function": {"name": "f"}}]
    for choice in forced:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**ask, tools=tools, tool_choice=choice)
        assert e.value.body == {
            "message": "Invalid JSON schema: `properties` does not follow the JSON Schema metaschema",
            "type": "BadRequestError",
            "param": "tools",
            "code": 400,
        }
    free = client.chat.completions.create(**ask, tools=tools, tool_choice="auto")
    assert free.choices[0].message.tool_calls is None and free.choices[0].message.content
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "required": 5}},
    }
    with pytest.raises(openai.BadRequestError, match="`required` does not follow") as e:
        client.chat.completions.create(**ask, response_format=fmt)
    assert e.value.param == "response_format"
    response_tools: Any = [{"type": "function", "name": "f", "parameters": bad, "strict": False}]
    with pytest.raises(openai.BadRequestError, match="`properties` does not follow"):
        client.responses.create(
            model="llama-8b",
            input="hi",
            tools=response_tools,
            tool_choice="required",
        )


# ---- the SDK's view of the same cases ----------------------------------------------------------------------
_ERRORS: dict[int, type[openai.APIStatusError]] = {400: openai.BadRequestError, 404: openai.NotFoundError}
SDK_CASES = [
    (r, n)
    for r, n in ALL_CASES
    if _case(r, n)["request"]["path"]
    in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models")
]


def _sdk_call(client: openai.OpenAI, path: str, body: Any) -> Any:
    if path == "/v1/models":
        return client.models.list()
    if isinstance(body, str):  # malformed JSON: only the SDK's raw post can send it
        headers = {"Content-Type": "application/json"}
        return client.post(
            "/chat/completions", cast_to=ChatCompletion, content=body.encode(), options={"headers": headers}
        )
    if path == "/v1/chat/completions" and "messages" not in body:
        return client.post("/chat/completions", cast_to=ChatCompletion, body=body)
    kwargs = dict(body)
    if "ignore_eos" in kwargs:
        kwargs["extra_body"] = {"ignore_eos": kwargs.pop("ignore_eos")}
    create: Callable[..., Any]
    if path == "/v1/chat/completions":
        create = client.chat.completions.create
    elif path == "/v1/completions":
        create = client.completions.create
    else:
        create = client.responses.create
    return create(**kwargs)


@pytest.mark.parametrize(("recording", "name"), SDK_CASES, ids=[f"{r}:{n}" for r, n in SDK_CASES])
def test_sdk_replay(request: pytest.FixtureRequest, recording: str, name: str) -> None:
    case = _case(recording, name)
    sim = _sim_for(request, recording)
    path, body = case["request"]["path"], request_body(case)
    client = _client(sim)
    if case["status"] >= 400:
        with pytest.raises(_ERRORS[case["status"]]) as info:
            _sdk_call(client, path, body)
        assert info.value.status_code == case["status"]
        assert info.value.body == json.loads(case["body"])["error"]
        return
    result = _sdk_call(client, path, body)
    if path == "/v1/models":
        models = list(result)
        assert [m.id for m in models] == ["llama-8b"]
        assert models[0].object == "model" and models[0].owned_by == "vllm"
    elif isinstance(body, dict) and body.get("stream"):
        chunks = list(result)
        with_usage = bool(body.get("stream_options", {}).get("include_usage"))
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finishes) == 1
        assert (chunks[-1].choices == []) is with_usage
        if path == "/v1/chat/completions":
            assert chunks[0].choices[0].delta.role == "assistant"
            assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
        if with_usage:
            usage = chunks[-1].usage
            assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
            assert usage.completion_tokens <= body["max_tokens"]
    elif path == "/v1/responses":
        assert result.object == "response" and result.status in ("completed", "incomplete")
        assert result.usage.output_tokens <= body["max_output_tokens"]
        assert result.output_text == result.output[0].content[0].text
    else:
        assert len(result.choices) == body.get("n", 1)
        assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
        assert result.usage.completion_tokens <= body["max_tokens"] * body.get("n", 1)
        assert [c.index for c in result.choices] == list(range(len(result.choices)))


# ---- endpoints outside the SDK -----------------------------------------------------------------------------
def test_tokenize_counts_match_chat_usage(plain_sim: SimProcess) -> None:
    tok = send_raw(plain_sim, CONTRACT["tokenize_chat"]).json()
    assert tok["count"] == len(tok["tokens"])
    chat = send_raw(plain_sim, CONTRACT["chat"]).json()
    assert chat["usage"]["prompt_tokens"] == tok["count"]


def test_reset_prefix_cache_needs_dev_mode(plain_sim: SimProcess, tools_sim: SimProcess) -> None:
    assert httpx.post(plain_sim.url + "/reset_prefix_cache", timeout=5).status_code == 404
    resp = httpx.post(tools_sim.url + "/reset_prefix_cache", timeout=5)
    assert resp.status_code == 200 and resp.json() == {"success": True}
