"""Fuzzing the gateway's public API: any input gets an answer in OpenAI's error shape or a success,
never a 5xx of the gateway's own and never a hang."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GatewayProcess, SimProcess, free_port, spawn_sim, wait_ready

MODEL = "llama-8b"
PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/tokenize",
    "/v1/models",
]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "model": st.sampled_from([MODEL, "nope", ""]) | JSON,
    "messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": JSON}), max_size=3
    )
    | JSON,
    "prompt": st.text(max_size=30) | st.lists(st.integers(0, 200000), max_size=5) | JSON,
    "max_tokens": st.integers(-5, 5) | JSON,
    "stream": st.booleans() | JSON,
    "temperature": st.floats(-3, 3) | JSON,
    "n": st.integers(-1, 3),
    "input": st.text(max_size=20) | JSON,
}
BODIES = st.dictionaries(st.sampled_from(list(FIELDS)), st.none(), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    import subprocess
    import sys

    d = tmp_path_factory.mktemp("fuzz")
    sim: SimProcess = spawn_sim(
        d, "--served-model-name", MODEL, "--time-scale", "50", "--max-model-len", "4096"
    )
    port, admin = free_port(), free_port()
    log = d / "gateway.log"
    cmd = [sys.executable, "-m", "fleetgate", "gateway", "--upstream", sim.url, "--host", "127.0.0.1",
           "--port", str(port), "--admin-port", str(admin)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    gw = GatewayProcess(proc, port, admin, log)
    wait_ready(gw.url, proc, log)
    deadline = time.monotonic() + 20
    while httpx.get(f"{gw.url}/ready").status_code != 200:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield gw
    gw.stop()
    sim.stop()


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:300])
        body: Any = r.json()
        assert set(body.get("error", {})) == {"message", "type", "param", "code"}, body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=BODIES)
def test_json_bodies_never_5xx(gateway: GatewayProcess, path: str, body: dict[str, Any]) -> None:
    if isinstance(body.get("max_tokens"), int) and not isinstance(body.get("max_tokens"), bool):
        body["max_tokens"] = min(body["max_tokens"], 5)
    with httpx.Client(timeout=20) as c:
        method = "GET" if path == "/v1/models" else "POST"
        if body.get("stream") is True and method == "POST":
            with c.stream(method, gateway.url + path, content=orjson.dumps(body)) as r:
                r.read()
                check(r)
        else:
            check(c.request(method, gateway.url + path, content=orjson.dumps(body)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS[:-1]), raw=st.binary(max_size=200))
def test_raw_bytes_never_5xx(gateway: GatewayProcess, path: str, raw: bytes) -> None:
    r = httpx.post(gateway.url + path, content=raw, timeout=20)
    check(r)
