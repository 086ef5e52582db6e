"""Tool-call parsing of crafted model outputs: whole (vLLM's hermes parser) and streamed (its deltas)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.engines.embedded.tools import ToolCallStream, parse, value_end


def _stream(text: str, cuts: list[int]) -> list[dict[str, Any]]:
    s = ToolCallStream()
    out: list[dict[str, Any]] = []
    last = 0
    for at in sorted(set(cuts)):
        out += s.feed(text[last:at])
        last = at
    out += s.feed(text[last:])
    return out + s.finish()


def _calls(deltas: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
    """(content, [(name, arguments)]) put back together from streamed deltas."""
    content = ""
    calls: dict[int, list[str]] = {}
    for d in deltas:
        if d.get("content"):
            content += d["content"]
        for call in d.get("tool_calls") or ():
            fn = call["function"]
            if "name" in fn:
                assert call["id"].startswith("chatcmpl-tool-") and call["type"] == "function"
                calls[call["index"]] = [fn["name"], ""]
            if "arguments" in fn:
                calls[call["index"]][1] += fn["arguments"]
    return content, [(n, a) for n, a in (calls[i] for i in sorted(calls))]


def test_hermes_single_call() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tainan", "days": 2}}\n</tool_call>'
    content, calls = parse(text)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Tainan", "days": 2})
    ]
    assert calls[0].id.startswith("chatcmpl-tool-")
    assert calls[0].to_dict()["type"] == "function"


def test_hermes_content_before_two_calls_and_unterminated_last() -> None:
    text = (
        'Let me check.<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "parameters": {"y": "z"}}'
    )
    content, calls = parse(text)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {"y": "z"})]


def test_broken_call_is_content() -> None:
    text = '<tool_call>\n{"name": "a", "arguments": {"x": </tool_call>'
    assert parse(text) == (text, [])


def test_plain_json_calls() -> None:
    content, calls = parse(' {"name": "a", "arguments": "{\\"k\\": [1, 2]}"} ')
    assert content is None and [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"k": [1, 2]})]
    content, calls = parse('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"q": null}}]')
    assert [c.name for c in calls] == ["a", "b"] and json.loads(calls[1].arguments) == {"q": None}
    assert parse('{"answer": 42}') == ('{"answer": 42}', [])
    assert parse("plain words") == ("plain words", [])


def test_stream_shapes_match_vllm() -> None:
    text = 'Sure<tool_call>\n{"name": "plan", "arguments": {"days": 3}}\n</tool_call>'
    deltas = _stream(text, list(range(len(text))))
    first_call = next(d for d in deltas if d.get("tool_calls"))
    assert first_call["content"] is None
    assert list(first_call["tool_calls"][0]) == ["id", "type", "index", "function"]
    assert first_call["tool_calls"][0]["function"] == {"name": "plan"}
    args = [d for d in deltas if d.get("tool_calls") and "arguments" in d["tool_calls"][0]["function"]]
    assert all(list(d["tool_calls"][0]) == ["index", "function"] for d in args)
    content, calls = _calls(deltas)
    assert content == "Sure"
    assert [(n, json.loads(a)) for n, a in calls] == [("plan", {"days": 3})]


def test_stream_holds_back_a_partial_tag_and_releases_it() -> None:
    s = ToolCallStream()
    assert s.feed("a <tool") == [{"content": "a "}]
    assert s.feed("box>") == [{"content": "<toolbox>"}]
    assert s.finish() == []
    assert not s.called


def test_stream_bare_json_waits_for_the_end() -> None:
    s = ToolCallStream()
    assert s.feed('{"name": "f", ') == []
    assert s.feed('"arguments": {"a": 1}}') == []
    content, calls = _calls(s.finish())
    assert content == "" and [(n, json.loads(a)) for n, a in calls] == [("f", {"a": 1})]
    assert s.called


def test_value_end() -> None:
    assert value_end('  {"a": "}", "b": [1, {"c": 2}]} tail') == 32
    assert value_end('{"a": "x\\"}"') is None
    assert value_end("12, ") == 2
    assert value_end("12") is None
    assert value_end('"s"') == 3


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.dictionaries(st.text(max_size=6), _json)
        ),
        min_size=1,
        max_size=3,
    ),
    prefix=st.text(alphabet="ab <>\n", max_size=6).filter(lambda t: "<tool_call>" not in t),
    data=st.data(),
)
def test_streamed_calls_reassemble_to_the_whole_parse(
    calls: list[tuple[str, dict[str, Any]]], prefix: str, data: st.DataObject
) -> None:
    body = "\n".join(
        f'<tool_call>\n{{"name": "{n}", "arguments": {json.dumps(a, ensure_ascii=False)}}}\n</tool_call>'
        for n, a in calls
    )
    text = prefix + body
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    content, streamed = _calls(_stream(text, cuts))
    whole_content, whole = parse(text)
    assert content == (whole_content or "")
    assert [(n, json.loads(a)) for n, a in streamed] == [(c.name, json.loads(c.arguments)) for c in whole]
    assert [(c.name, json.loads(c.arguments)) for c in whole] == calls
