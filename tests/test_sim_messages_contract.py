"""Replay what a real vLLM 0.26 answered on Anthropic's Messages routes (tests/data/messages_contract.json,
recorded on an H100 by benchmarks/record_messages_contract.py) against `fleetgate sim`.

Compared as tests/test_sim_contract.py compares the OpenAI routes: statuses and content types exactly, bodies
by shape (same keys, same JSON types), errors exactly (they carry no ids or dates), streams by their framing
(`event: NAME` + `data: {json}` + a blank line) and by the sequence of event types.

The recording is ground truth for what fleetgate meets behind a pass-through, defects included. Facts in it
that look like vLLM defects rather than API design (the simulator imitates them all; a client sees them):
- `messages_image_block`: an image for a text-only model is a 500 `internal_error`, not a 400: vLLM's
  Messages route answers every exception raised under it as 500 (only errors its chat code *returns*, such
  as the unknown model's 404, keep their status).
- `err_too_long`: `max_tokens` past the context is a 500 `internal_error` for the same reason (the chat
  route answers the same check with a 400), and it names `max_completion_tokens`, the field vLLM's
  conversion fills.
- `err_missing_max_tokens`, `err_bad_json`, `err_bad_role`: validation failures come in OpenAI's error shape
  (`{"error": {...}}`, type "Bad Request"), not Anthropic's `{"type": "error", ...}`; the Anthropic SDK still
  raises the right class by status.
- Error types are vLLM's OpenAI class names (`NotFoundError`), not Anthropic's (`not_found_error`).
- `messages_tools_any_stream`: cut at `max_tokens` while forced to call a tool (`any`), the stream still
  ends with `stop_reason: tool_use` (vLLM's chat stream reports `tool_calls` once a call was streamed under
  `required`; a named choice keeps `length`, see contract_tools.json's `tools_named_stream`).
- Ids are the chat completion's (`chatcmpl-...`, tool calls `chatcmpl-tool-...`), not `msg_`/`toolu_`; a
  whole message has no `stop_sequence` key; streams carry no `ping` event.
Values that depend on the recorded model and not on vLLM are not compared: its tiny chat template ignores
`tools` (so `count_tokens_tools` counts as many tokens as the same turn without tools), the simulator's
renders them; the text is random weights' text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import SimProcess, spawn_sim
from tests.test_sim_contract import BASE_FLAGS, TOOL_FLAGS, _fewest, recorded_text, send_raw, shape_diff

DATA = Path(__file__).parent / "data"
RECORDING: dict[str, dict[str, Any]] = json.loads((DATA / "messages_contract.json").read_text())
ROUTES: list[str] = RECORDING["openapi_paths"]["paths"]
CASES = [name for name in RECORDING if name != "openapi_paths"]
STREAMS = [name for name in CASES if RECORDING[name]["chunks"] is not None]
MODEL = "llama-8b"
# The recording server's context (`--max-model-len 4096`): `err_too_long`'s message names it.
MAX_MODEL_LEN = "4096"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    p = spawn_sim(tmp_path_factory.mktemp("msgs"), *BASE_FLAGS, *TOOL_FLAGS, "--max-model-len", MAX_MODEL_LEN)
    yield p
    p.stop()


def _body(name: str) -> Any:
    return RECORDING[name]["request"]["body"]


def _json(text: str) -> Any:
    return json.loads(text)


# ---- streams -----------------------------------------------------------------------------------------------
def sse_events(text: str) -> list[dict[str, Any]]:
    """The events of an Anthropic stream, checking its framing: `event: NAME\\ndata: {json}\\n\\n` each, the
    name equal to the data's `type`, nothing after the last blank line and no OpenAI `[DONE]`."""
    blocks = text.split("\n\n")
    assert blocks[-1] == "", f"stream has bytes after the final blank line: {blocks[-1]!r:.200}"
    out = []
    for block in blocks[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2, f"an event is one event line and one data line: {block!r:.200}"
        framed = lines[0].startswith("event: ") and lines[1].startswith("data: ")
        assert framed, f"bad framing: {block!r:.200}"
        data = json.loads(lines[1].removeprefix("data: "))
        assert isinstance(data, dict) and data["type"] == lines[0].removeprefix("event: ")
        out.append(data)
    return out


def event_kind(e: Mapping[str, Any]) -> str:
    """The event's type, with the block type of a block start and the delta type of a block delta."""
    if e["type"] == "content_block_start":
        return f"content_block_start:{e['content_block']['type']}"
    if e["type"] == "content_block_delta":
        return f"content_block_delta:{e['delta']['type']}"
    return str(e["type"])


def skeleton(events: list[dict[str, Any]]) -> list[str]:
    """The sequence of event kinds, a run of deltas as one `...*` and a tool block's argument deltas left out:
    random weights under a grammar may stream no argument at all (the recorded `messages_tools_any_stream`
    closes its block right after opening it), the simulator completes arguments."""
    out: list[str] = []
    for k in map(event_kind, events):
        if k == "content_block_delta:input_json_delta":
            continue
        star = k + "*" if k.startswith("content_block_delta") else k
        if not out or out[-1] != star or not star.endswith("*"):
            out.append(star)
    return out


def compare_stream(rec_text: str, sim_text: str) -> list[dict[str, Any]]:
    rec, sim = sse_events(rec_text), sse_events(sim_text)
    assert skeleton(sim) == skeleton(rec), f"recorded {[event_kind(e) for e in rec]}\nsimulated {sim_text}"
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for e in rec:
        by_kind.setdefault(event_kind(e), []).append(e)
    for i, e in enumerate(sim):
        k = event_kind(e)
        if k == "content_block_delta:input_json_delta":
            # No recorded example (see skeleton): the shape of vLLM's text delta with Anthropic's field.
            assert set(e) == {"type", "delta", "index"} and set(e["delta"]) == {"type", "partial_json"}
            assert isinstance(e["delta"]["partial_json"], str) and isinstance(e["index"], int)
            continue
        tries = [shape_diff(r, e, f"event[{i}]({k})") for r in by_kind[k]]
        assert not all(tries), _fewest(tries)
    # One message: its id and counts in message_start, both counts again in message_delta.
    start, delta = sim[0]["message"], sim[-2]
    rec_start = rec[0]["message"]
    assert start["id"].rsplit("-", 1)[0] == rec_start["id"].rsplit("-", 1)[0] == "chatcmpl"
    assert start["model"] == rec_start["model"] == MODEL
    assert start["usage"]["output_tokens"] == 0
    assert delta["usage"]["input_tokens"] == start["usage"]["input_tokens"]
    blocks = [e["index"] for e in sim if e["type"] == "content_block_start"]
    assert blocks == list(range(len(blocks)))
    return sim


# ---- the replay --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_replay_matches_recording(sim: SimProcess, name: str) -> None:
    case = RECORDING[name]
    resp = send_raw(sim, case)
    assert resp.status_code == case["status"], resp.text[:500]
    assert resp.headers.get("content-type") == case["headers"]["content-type"]
    if case["chunks"] is not None:
        events = compare_stream(recorded_text(case), resp.text)
        rec_end = sse_events(recorded_text(case))[-2]["delta"]["stop_reason"]
        assert events[-2]["delta"]["stop_reason"] == rec_end
        assert events[-2]["usage"]["output_tokens"] <= _body(name)["max_tokens"]
        return
    rec_body, sim_body = _json(case["body"]), resp.json()
    if case["status"] >= 400:
        # Errors are deterministic (no ids or dates in them): the simulator answers vLLM's exact words.
        assert sim_body == rec_body
        return
    assert not shape_diff(rec_body, sim_body), shape_diff(rec_body, sim_body)
    if "messages" in case["request"]["path"] and "count_tokens" not in case["request"]["path"]:
        assert sim_body["id"].startswith("chatcmpl-") and sim_body["model"] == MODEL
        assert sim_body["stop_reason"] == rec_body["stop_reason"]
        assert sim_body["usage"]["output_tokens"] <= _body(name)["max_tokens"]


def test_every_recorded_case_is_replayed() -> None:
    assert set(CASES) | {"openapi_paths"} == set(RECORDING)
    assert {"messages_stream", "messages_tools_any_stream"} == set(STREAMS)


def test_message_start_carries_type_and_role(sim: SimProcess) -> None:
    """The recording overturned what reading vLLM's source had suggested (a `message_start` message without
    `type` and `role`): vLLM sends both."""
    rec = sse_events(recorded_text(RECORDING["messages_stream"]))[0]["message"]
    got = sse_events(send_raw(sim, RECORDING["messages_stream"]).text)[0]["message"]
    assert (rec["type"], rec["role"]) == (got["type"], got["role"]) == ("message", "assistant")


def test_count_tokens_equals_the_messages_input_tokens(sim: SimProcess) -> None:
    """As recorded (33 and 33, 19 and 19): count_tokens counts the prompt the same request is charged."""
    pairs = [("count_tokens", "messages_system_stop"), ("count_tokens_tools", "messages_tools_auto")]
    for count_case, message_case in pairs:
        rec_count = _json(RECORDING[count_case]["body"])["input_tokens"]
        rec_usage = _json(RECORDING[message_case]["body"])["usage"]["input_tokens"]
        assert rec_count == rec_usage
        count = send_raw(sim, RECORDING[count_case]).json()
        asked = {k: v for k, v in _body(message_case).items() if k in _body(count_case)}
        usage = httpx.post(sim.url + "/v1/messages", json={**asked, "max_tokens": 4}, timeout=30).json()[
            "usage"
        ]
        assert count["input_tokens"] == count["context_management"]["original_input_tokens"]
        assert count["input_tokens"] == usage["input_tokens"], (count_case, message_case)


def test_published_messages_routes_exist(sim: SimProcess) -> None:
    """Every route the recorded server publishes about messages answers on the simulator (a body its
    models refuse is a 400 in vLLM's validation shape, not a 404)."""
    messages_routes = [p for p in ROUTES if "messages" in p]
    assert messages_routes == ["/v1/messages", "/v1/messages/count_tokens"]
    for path in messages_routes:
        resp = httpx.post(sim.url + path, json={}, timeout=10)
        assert resp.status_code == 400, (path, resp.text)
        assert resp.json()["error"]["type"] == "Bad Request"


# ---- the Anthropic SDK's view of the same cases ------------------------------------------------------------
_ERRORS: dict[int, type[anthropic.APIStatusError]] = {
    400: anthropic.BadRequestError,
    404: anthropic.NotFoundError,
    500: anthropic.InternalServerError,
}


_SAMPLING = ("temperature", "top_p", "top_k")


def _sdk(sim: SimProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="x", max_retries=0)


def _sdk_call(client: anthropic.Anthropic, name: str) -> Any:
    body = _body(name)
    if isinstance(body, str):  # malformed JSON: only the SDK's raw post can send it
        options: Any = {"headers": {"Content-Type": "application/json"}}
        return client.post(
            "/v1/messages", cast_to=anthropic.types.Message, content=body.encode(), options=options
        )
    if RECORDING[name]["request"]["path"].endswith("/count_tokens"):
        return client.messages.count_tokens(**body)
    if "max_tokens" not in body or body["max_tokens"] > 100_000:
        # The SDK insists on max_tokens and refuses (client side) a non-streamed one it deems too long to
        # wait for: send these bodies as they are.
        return client.post("/v1/messages", cast_to=anthropic.types.Message, body=body)
    # This SDK's `create` has no sampling parameters (temperature, top_p): they travel as extra body.
    extra = {k: body[k] for k in _SAMPLING if k in body}
    return client.messages.create(**{k: v for k, v in body.items() if k not in _SAMPLING}, extra_body=extra)


@pytest.mark.parametrize("name", CASES)
def test_sdk_replay(sim: SimProcess, name: str) -> None:
    case = RECORDING[name]
    client = _sdk(sim)
    if case["status"] >= 400:
        with pytest.raises(_ERRORS[case["status"]]) as info:
            _sdk_call(client, name)
        assert info.value.status_code == case["status"]
        assert info.value.body == _json(case["body"])
        return
    result = _sdk_call(client, name)
    if name.startswith("count_tokens"):
        assert result.input_tokens > 0
        return
    if _body(name).get("stream"):
        kinds = [e.type for e in result]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        return
    assert result.type == "message" and result.role == "assistant"
    assert result.content and result.usage.output_tokens <= _body(name)["max_tokens"]


def test_sdk_streams_a_forced_tool_call(sim: SimProcess) -> None:
    """The stream the recording cut short, assembled by the SDK's stream helper: a tool_use block naming the
    forced tool, ending as vLLM ends it."""
    body = {**_body("messages_tools_any_stream")}
    del body["stream"]
    with _sdk(sim).messages.stream(**body) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "search_segments"
    assert block.id.startswith("chatcmpl-tool-")


def test_the_chat_route_answers_the_same_overrun_with_a_400(sim: SimProcess) -> None:
    """The context check the Messages route turns into a 500 is a 400 on the chat route (recorded:
    contract.json's err_max_tokens_too_big), naming the field the request gave: vLLM's Messages conversion
    fills `max_completion_tokens`, hence that name in `err_too_long`."""
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10**7}
    resp = httpx.post(sim.url + "/v1/chat/completions", json=ask, timeout=10)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["type"] == "BadRequestError" and err["param"] == "max_completion_tokens"
    recorded = json.loads(RECORDING["err_too_long"]["body"])["error"]["message"]
    assert err["message"] == recorded
