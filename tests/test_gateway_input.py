"""Hostile and unusual input through the real gateway: every answer in OpenAI's error shape, every answer
counted and logged once with its tenant, and no stricter than vLLM where clients rely on vLLM."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.api.app import create_app
from fleetgate.api.asgi import Exchange
from fleetgate.config import parse_config
from fleetgate.protocol import error_from_body, is_openai_error
from tests.conftest import GatewayFactory, GatewayProcess, SimProcess, free_port, spawn_sim, until

MODEL = "llama-8b"


def samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        out += [(s.labels, float(s.value)) for s in family.samples if s.name == name]
    return out


def total(url: str, name: str, **labels: str) -> float:
    return sum(v for ls, v in samples(url, name) if all(ls.get(k) == w for k, w in labels.items()))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    proc = spawn_sim(tmp_path_factory.mktemp("sim"), "--served-model-name", MODEL, "--time-scale", "20")
    yield proc
    proc.stop()


def fleet(sim: SimProcess, extra: str = "", pool: str = "", log: str = "json") -> str:
    return fleet_of(f"[{sim.url}]", extra, pool, log)


def fleet_of(endpoints: str, extra: str = "", pool: str = "", log: str = "json") -> str:
    """One pool, `main`, of the endpoints given as the fleet file's list."""
    return f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
log: {{format: {log}, level: info}}
{extra}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: {endpoints}
{pool}
"""


def access_lines(gw: GatewayProcess) -> list[dict[str, object]]:
    out = []
    for line in gw.log.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("msg") == "request":
                out.append(record)
    return out


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def test_malformed_tool_calls_never_fail_the_gateway(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = gateway_factory(fleet(sim))
    bad_messages = [
        [{"role": "assistant", "tool_calls": [{"function": [None, None]}]}, {"role": "user", "content": "x"}],
        [{"role": "assistant", "tool_calls": 5}, {"role": "user", "content": "x"}],
        [{"role": "assistant", "tool_calls": [{"function": {"name": 3, "arguments": {"a": [1]}}}]}],
        [{"role": "user", "content": [{"type": "text", "text": None}, 7]}],
    ]
    for messages in bad_messages:
        r = httpx.post(
            f"{gw.url}/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 2}
        )
        assert r.status_code < 500, r.text
        assert r.headers["content-type"].startswith("application/json")
    r = httpx.post(
        f"{gw.url}/v1/responses",
        json={
            "model": MODEL,
            "input": [{"type": "function_call", "arguments": [None]}],
            "max_output_tokens": 2,
        },
    )
    assert r.status_code < 500, r.text


def test_upstream_errors_outside_openai_shape_reach_the_client_in_it(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    """vLLM answers a route its model does not serve (embeddings from a generation model) with FastAPI's
    `{"detail": "Not Found"}`; the gateway passed that through. An upstream error that is not an OpenAI error
    object becomes one, its status kept; the upstream's own OpenAI errors still pass unchanged."""
    gw = gateway_factory(fleet(sim))
    assert httpx.post(f"{sim.url}/v1/embeddings", json={"model": MODEL, "input": "x"}).json() == {
        "detail": "Not Found"
    }
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model=MODEL, input="x")
    assert e.value.response.headers["content-type"] == "application/json"
    assert e.value.body == {
        "message": "upstream answered 404: Not Found",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    ollama = httpx.post(f"{gw.url}/api/embed", json={"model": MODEL, "input": "x"})
    assert (ollama.status_code, ollama.json()) == (404, {"error": "upstream answered 404: Not Found"})
    own = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": [-1], "max_tokens": 2})
    assert (own.status_code, own.json()["error"]["message"]) == (400, "Token id out of vocabulary range")


@pytest.mark.parametrize(
    ("body", "status", "message", "kind"),
    [
        (b'{"detail":"Not Found"}', 404, "upstream answered 404: Not Found", "NotFoundError"),
        (
            b"Internal Server Error",
            500,
            "upstream answered 500: Internal Server Error",
            "InternalServerError",
        ),
        (b"<html><body>502 Bad Gateway</body></html>", 502, "upstream answered 502", "BadGatewayError"),
        (b'{"error":{"message":"m","type":"T"}}', 400, "m", "T"),
        (b"\xff\x00", 418, "upstream answered 418", "BadRequestError"),
    ],
)
def test_upstream_error_bodies_become_openai_errors(
    body: bytes, status: int, message: str, kind: str
) -> None:
    assert is_openai_error(body) == body.startswith(b'{"error"')
    error = error_from_body(body, status)
    assert (error.status, error.message, error.type) == (status, message, kind)


class _Failing(http.server.BaseHTTPRequestHandler):
    """An upstream that is up (health, models) but answers every request with a bare 500, as a crashed app
    behind uvicorn or a proxy does."""

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
        self._answer(200 if self.path in ("/health", "/v1/models") else 404, body, "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self._answer(500, b"Internal Server Error", "text/plain")

    def _answer(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_bare_5xx_counts_against_the_endpoint_an_engines_own_error_does_not(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    """A 500 with the engine's error body is its answer about this request (vLLM answers 500 to an image for
    a text-only model); one without is the endpoint failing. Only that one counts towards its breaker."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answering = spawn_sim(tmp_path, "--served-model-name", MODEL, "--fault-error-rate", "500=1")
    try:
        bare = f"http://127.0.0.1:{server.server_port}"
        gw = gateway_factory(
            fleet_of(f"[{{url: '{bare}', name: bare}}, {{url: '{answering.url}', name: engine}}]")
        )
        seen: set[str] = set()
        for _ in range(12):
            r = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
            assert_openai_error(r, 500)
            seen.add(r.json()["error"]["message"])
        assert seen >= {"injected fault"}  # the engine's own error, passed through unchanged
        endpoints = {
            e["name"]: e for e in httpx.get(f"{gw.admin}/admin/fleet").json()["pools"]["main"]["endpoints"]
        }
        assert endpoints["bare"]["last_error"] == "HTTP 500"
        assert endpoints["engine"]["last_error"] is None
    finally:
        answering.stop()
        server.shutdown()
        server.server_close()


def test_an_endpoint_answering_engine_errors_is_checked_at_once(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    """A dead engine core answers every request with a 500 in vLLM's own error shape (not counted against the
    endpoint) and its /health with 503: the first such answer has the endpoint checked now, not at the next
    probe (30 s here), so it leaves rotation after one failed request."""
    dead = spawn_sim(tmp_path, "--served-model-name", MODEL, "--admin")
    alive = spawn_sim(tmp_path, "--served-model-name", MODEL)
    try:
        gw = gateway_factory(
            fleet_of(
                f"[{{url: '{dead.url}', name: dead}}, {{url: '{alive.url}', name: alive}}]",
                pool="    routing: {picker: round_robin}\n    health: {interval: 30}",
            )
        )

        def state(name: str) -> str:
            endpoints = httpx.get(f"{gw.admin}/admin/fleet").json()["pools"]["main"]["endpoints"]
            return str(next(e for e in endpoints if e["name"] == name)["state"])

        until(lambda: state("dead") == state("alive") == "closed", "both endpoints in rotation")
        faults = {"error_rates": {"500": 1.0}, "health": "fail"}
        httpx.post(f"{dead.url}/_sim/faults", json=faults).raise_for_status()
        statuses = []
        for _ in range(2):  # round robin: one of the two reaches the dead endpoint
            r = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
            statuses.append(r.status_code)
        assert sorted(statuses) == [200, 500]
        until(lambda: state("dead") == "open", "the dead endpoint out of rotation", within=5)
        for _ in range(6):
            r = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
            assert r.status_code == 200, r.text
    finally:
        dead.stop()
        alive.stop()


def test_errors_the_gateway_makes_are_counted_and_logged_once(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = gateway_factory(fleet(sim, "keys: [{name: web, key: sk-web-1}]"))
    auth = {"authorization": "Bearer sk-web-1"}
    cases = [
        (httpx.post(f"{gw.url}/v1/completions", content=b"{not json", headers=auth), 400),
        (httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x"}), 401),
        (httpx.get(f"{gw.url}/v1/nothing-here", headers=auth), 404),
        (
            httpx.post(
                f"{gw.url}/v1/completions",
                json={"model": MODEL, "prompt": "x", "max_tokens": -3},
                headers={**auth, "x-request-id": "neg-1"},
            ),
            400,
        ),
    ]
    for r, status in cases:
        assert_openai_error(r, status)
    until(lambda: len(access_lines(gw)) >= 4, "four access-log lines")
    lines = access_lines(gw)
    assert sorted(int(str(line["status"])) for line in lines) == [400, 400, 401, 404]
    assert next(line for line in lines if line["request_id"] == "neg-1")["tenant"] == "web"
    for code, count in (("400", 2), ("401", 1), ("404", 1)):
        assert total(gw.admin, "fleetgate_requests_total", status=code) == count


def test_values_vllm_accepts_pass_and_limits_of_the_operator_hold(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = gateway_factory(fleet(sim, pool="    limits: {max_n: 2}"))
    for body in (
        {"stream": None, "max_tokens": 2},
        {"max_tokens": "2"},
        {"max_tokens": 2.0},
        {"max_tokens": 2, "stream": "false"},
    ):
        r = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", **body})
        assert r.status_code == 200, (body, r.text)
        assert r.json()["usage"]["completion_tokens"] <= 2
    for bad in ({"max_tokens": "eight"}, {"max_tokens": 2.5}, {"stream": "maybe"}):
        assert_openai_error(
            httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", **bad}), 400
        )
    ok = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1, "n": 2})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2
    error = assert_openai_error(
        httpx.post(
            f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1, "n": 50}
        ),
        400,
    )
    assert error["param"] == "n" and "2" in str(error["message"])


def test_unknown_models_request_ids_and_authorization_headers_cannot_abuse_the_gateway(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = gateway_factory(fleet(sim, log="text"))
    huge = "m" * 10_000
    error = assert_openai_error(
        httpx.post(f"{gw.url}/v1/completions", json={"model": huge, "prompt": "x"}), 404
    )
    assert len(str(error["message"])) < 400
    forged = "abc status=200 tenant=admin"
    r = httpx.post(
        f"{gw.url}/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 1},
        headers={"x-request-id": forged},
    )
    assert r.status_code == 200
    until(lambda: "request_id=" in gw.log.read_text() and "abc" in gw.log.read_text(), "the access line")
    line = next(ln for ln in gw.log.read_text().splitlines() if "abc" in ln)
    assert f"request_id={json.dumps(forged)}" in line
    assert line.count("status=") == 2 and line.count("tenant=") == 2  # the forged ones stay inside quotes
    # Two Authorization headers: ambiguous, refused (the last one must not silently win).
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
            b"Authorization: Bearer b\r\nConnection: close\r\n\r\n"
        )
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"Authorization" in reply and b'"error"' in reply


def test_tenants_label_requests_and_streams_count_tokens_without_include_usage(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = gateway_factory(fleet(sim, "keys: [{name: web, key: sk-web-1}, {name: batch, key: sk-batch-1}]"))
    web = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-web-1", max_retries=0)
    chunks = list(
        web.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=5,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert all(c.choices for c in chunks)  # no usage-only chunk the client did not ask for
    assert all(c.usage is None for c in chunks)
    assert total(gw.admin, "fleetgate_tokens_total", tenant="web", direction="out") == 5
    asked = list(
        web.completions.create(
            model=MODEL,
            prompt="x",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 3
    batch = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-batch-1", max_retries=0)
    batch.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={"ignore_eos": True})
    assert total(gw.admin, "fleetgate_tokens_total", tenant="web", direction="out") == 8
    assert total(gw.admin, "fleetgate_tokens_total", tenant="batch", direction="out") == 2
    assert total(gw.admin, "fleetgate_requests_total", tenant="web", status="200") == 2
    until(lambda: len(access_lines(gw)) >= 3, "three access lines")
    assert sorted(str(line["tenant"]) for line in access_lines(gw)) == ["batch", "web", "web"]
    tenants = {ls["tenant"] for ls, _ in samples(gw.admin, "fleetgate_requests_total")}
    assert tenants <= {"web", "batch", "anonymous", "none"}


def test_discovery_with_an_upstream_down_answers_404_for_unknown_models(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(upstreams=[sim.url, down])
    assert_openai_error(httpx.post(f"{gw.url}/v1/completions", json={"model": "nope", "prompt": "x"}), 404)
    r = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
    assert r.status_code == 200


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "fleetgate", "gateway", "--upstream", "http://127.0.0.1:9", "--host",
             "127.0.0.1", "--port", str(port), "--admin-port", str(free_port())],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert str(port) in out.stderr and "--port" in out.stderr


def test_a_defect_inside_the_gateway_answers_an_openai_500_not_plain_text() -> None:
    """An exception no handler expected (a bug of ours) still gets OpenAI's shape and the request id, and is
    counted; only a stream already under way is cut."""
    public, _ = create_app(parse_config('pools: [{name: p, models: [m], endpoints: ["http://127.0.0.1:9"]}]'))

    async def broken(x: Exchange) -> None:
        raise RuntimeError("a defect")

    public.routes["/version"]["GET"] = broken
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/version", "headers": [(b"x-request-id", b"rid-1")],
             "query_string": b"", "client": ("127.0.0.1", 1)}  # fmt: skip
    asyncio.run(public(scope, receive, send))
    start, body = sent[0], sent[1]
    assert start["status"] == 500
    assert (b"x-request-id", b"rid-1") in start["headers"]  # type: ignore[operator]
    error = json.loads(body["body"])["error"]  # type: ignore[arg-type]
    assert error["type"] == "InternalServerError" and "rid-1" in error["message"]
