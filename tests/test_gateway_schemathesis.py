"""schemathesis against a real gateway in front of real simulators, driven by the OpenAPI description of the
public routes in tests/data/openapi/public.yaml (a subset of OpenAI's request schemas, and Anthropic's for
/v1/messages).

Valid and invalid requests (schemathesis' positive and negative modes, and its coverage phase: boundary
values, wrong types, missing fields, unsupported methods) must get no 5xx, errors in the route's own shape,
answers that conform to the description, and 401 without a key. The fleet cannot be saturated (one request at
a time, a small max_tokens cap, healthy simulators), so any 5xx is a defect, not load.

More examples: FLEETGATE_FUZZ_EXAMPLES=500 pytest tests/test_gateway_schemathesis.py (docs/gateway.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from tests.conftest import DATA, GatewayProcess, SimProcess, spawn_sim
from tests.fleets import gateway

KEY = "sk-fuzz-1"
EXAMPLES = int(os.environ.get("FLEETGATE_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("FLEETGATE_FUZZ_SEED", "20261206"))
SPEC = DATA / "openapi" / "public.yaml"
# Routes whose errors take Anthropic's shape (docs/gateway.md, "Other APIs").
ANTHROPIC = {"/v1/messages"}
# Streams of these routes end with `data: [DONE]` (the Responses and Messages APIs end with a named event).
DONE_STREAMS = {"/v1/chat/completions", "/v1/completions"}
OPENAI_KINDS = {"chat", "completions", "embeddings", "responses"}

schema = schemathesis.openapi.from_path(SPEC)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES,
    database="none",
)
# Generation speed depends on the machine (CI shares 2 cores), not on the gateway: never a reason to fail.
schema.config.update(suppress_health_check=[schemathesis.config.HealthCheck.too_slow])
schema.config.seed = SEED  # the same cases on every run, so CI is stable; FLEETGATE_FUZZ_SEED picks others
schema.config.output.sanitization.update(enabled=False)  # it hides every field named like `*token*`
# Read whole streams (schemathesis stops at 20 events): n <= 4 and max_tokens <= 64 keep them short.
schema.config.max_stream_events = 20_000


def fleet(chat: SimProcess, embed: SimProcess) -> str:
    # One request at a time never fills a queue; small token limits keep every answer quick.
    return f"""
listen: {{host: 127.0.0.1}}
admin: {{host: 127.0.0.1}}
keys: [{{name: fuzz, key: {KEY}}}]
pools:
  - name: chat
    models: [llama-8b, {{alias: gpt-4o-mini}}]
    endpoints: [{chat.url}]
    limits: {{max_tokens_default: 8, max_tokens_cap: 64, max_n: 4}}
  - name: embed
    models: [minilm]
    endpoints: [{embed.url}]
"""


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    d = tmp_path_factory.mktemp("schemathesis")
    chat = spawn_sim(d, "--served-model-name", "llama-8b", "--time-scale", "100", "--max-model-len", "4096",
                     "--enable-auto-tool-choice", "--tool-call-parser", "hermes")  # fmt: skip
    embed = spawn_sim(d, "--profile", "cpu-minilm-embed", "--served-model-name", "minilm")
    try:
        with gateway(d, fleet(chat, embed)) as gw:
            yield gw
    finally:
        chat.stop()
        embed.stop()


def error_problem(path: str, body: Any) -> str | None:
    """What is wrong with an error body for its route's API, or None."""
    err = body.get("error") if isinstance(body, dict) else None
    if path in ANTHROPIC:
        if not isinstance(err, dict) or body.get("type") != "error":
            return "not {'type': 'error', 'error': {...}}"
        if not isinstance(err.get("type"), str) or not isinstance(err.get("message"), str):
            return "error.type and error.message must be strings"
        return None
    if not isinstance(err, dict) or set(err) != {"message", "type", "param", "code"}:
        return "not {'error': {'message', 'type', 'param', 'code'}}"
    if not isinstance(err["message"], str) or not isinstance(err["type"], str):
        return "error.message and error.type must be strings"
    if not (err["param"] is None or isinstance(err["param"], str)):
        return "error.param must be a string or null"
    if not (err["code"] is None or isinstance(err["code"], str | int)) or isinstance(err["code"], bool):
        return "error.code must be a string, an integer or null"
    return None


def stream_problem(path: str, text: str, whole: bool) -> str | None:
    """What is wrong with a 200 event stream: an error event not in its API's shape, or no `[DONE]` end."""
    # SSE lines end at \n (or \r\n); str.splitlines would also break at U+2028 inside a JSON string.
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = orjson.loads(line[6:])
        # OpenAI's error event is {"error": {...}}; Anthropic's is {"type": "error", "error": {...}}.
        if isinstance(event, dict) and "error" in event:
            problem = error_problem(path, event)
            if problem:
                return f"error event {line[:300]!r}: {problem}"
    if whole and path in DONE_STREAMS and not text.endswith("data: [DONE]\n\n"):
        return f"stream does not end with [DONE]: {text[-300:]!r}"
    return None


def errors_in_api_shape(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """Every error is JSON in its route's shape; every stream ends cleanly (schemathesis check signature)."""
    path = case.operation.path
    ctype = response.headers.get("content-type", [""])[0]
    if response.status_code >= 400:
        assert ctype.startswith("application/json"), (
            f"{response.status_code} {ctype}: {response.text[:300]!r}"
        )
        problem = error_problem(path, orjson.loads(response.content))
        assert problem is None, f"{response.status_code} {response.text[:300]!r}: {problem}"
    elif ctype.startswith("text/event-stream"):
        problem = stream_problem(path, response.text, whole=not response.stream_cut_short)
        assert problem is None, problem
    return None


CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.ignored_auth,
    openapi_checks.unsupported_method,
]


@schema.parametrize()
def test_public_routes(case: schemathesis.Case[Any], fuzzed: GatewayProcess) -> None:
    case.call_and_validate(
        base_url=fuzzed.url,
        headers={"Authorization": f"Bearer {KEY}"},
        checks=CHECKS,
        additional_checks=[errors_in_api_shape],
        timeout=30,
    )


def test_description_covers_the_public_openai_routes() -> None:
    """Every OpenAI generation route the gateway forwards is in the description, so none goes unfuzzed."""
    from fleetgate.api.app import FORWARDED

    documented = set(schema.raw_schema["paths"])
    openai_routes = {p for p, kind in FORWARDED.items() if p.startswith("/v1/") and kind in OPENAI_KINDS}
    assert len(openai_routes) == 4
    assert openai_routes | {"/v1/models", "/v1/messages", "/health", "/ready", "/version"} <= documented
