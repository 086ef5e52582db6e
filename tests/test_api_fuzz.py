"""Fuzzing the translated routes over HTTP: any body gets a success or an error in the route's own API shape
(Anthropic's or Ollama's), never a 5xx of the gateway's own and never a hang."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GatewayProcess, SimProcess, spawn_sim
from tests.fleets import gateway

MODEL = "llama-8b"
ANTHROPIC = ["/v1/messages", "/v1/messages/count_tokens"]
OLLAMA = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
BLOCK = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "x"])},
    optional={"text": JSON, "id": JSON, "name": JSON, "input": JSON, "tool_use_id": JSON, "content": JSON,
              "source": JSON},
)  # fmt: skip
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system"]) | JSON},
    optional={"content": st.text(max_size=12) | st.lists(BLOCK, max_size=3) | JSON, "tool_calls": JSON,
              "images": JSON, "tool_name": JSON},
)  # fmt: skip
FIELDS = {
    "model": st.sampled_from([MODEL, f"{MODEL}:latest", "nope", ""]) | JSON,
    "messages": st.lists(MESSAGE, max_size=3) | JSON,
    "max_tokens": st.integers(-2, 5) | JSON,
    "system": st.text(max_size=12) | JSON,
    "tools": JSON,
    "tool_choice": JSON,
    "stream": st.booleans() | JSON,
    "stop_sequences": JSON,
    "options": st.fixed_dictionaries(
        {}, optional={"num_predict": st.integers(-2, 5) | JSON, "temperature": JSON}
    ),
    "format": st.sampled_from(["json", ""]) | JSON,
    "prompt": st.text(max_size=12) | JSON,
    "input": st.text(max_size=12) | JSON,
    "raw": JSON,
}
BODIES = st.dictionaries(st.sampled_from(list(FIELDS)), st.none(), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    d = tmp_path_factory.mktemp("fuzz")
    flags = [
        "--time-scale",
        "50",
        "--max-model-len",
        "4096",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
    ]
    sim: SimProcess = spawn_sim(d, "--served-model-name", MODEL, *flags, "hermes")
    try:
        # Short answers: a body that sets no limit gets the pool's default.
        config = f"""
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sim.url}]
    limits: {{max_tokens_default: 8}}
"""
        with gateway(d, config) as g:
            yield g
    finally:
        sim.stop()


def check(path: str, r: httpx.Response) -> None:
    assert r.status_code < 500, (path, r.status_code, r.text[:300])
    if r.status_code < 400:
        return
    body: Any = r.json()
    if path in ANTHROPIC:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str), body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ANTHROPIC + OLLAMA), body=BODIES)
def test_json_bodies_never_5xx(gw: GatewayProcess, path: str, body: dict[str, Any]) -> None:
    with httpx.Client(timeout=20) as c, c.stream("POST", gw.url + path, content=orjson.dumps(body)) as r:
        r.read()
        check(path, r)
        if r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson":
            # A stream's lines are each a JSON object, the last one done or an error.
            lines = [orjson.loads(line) for line in r.text.splitlines() if line]
            assert lines and (lines[-1].get("done") is True or "error" in lines[-1])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ANTHROPIC + OLLAMA), raw=st.binary(max_size=100))
def test_raw_bytes_never_5xx(gw: GatewayProcess, path: str, raw: bytes) -> None:
    check(path, httpx.post(gw.url + path, content=raw, timeout=20))
