"""The gateway under faults: clients that leave or stop reading, frozen upstreams, SIGTERM with streams in
flight. Real simulator processes, a real gateway process, real sockets; load stays small (correctness)."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory, SimFactory, SimProcess, until

MODEL = "llama-8b"


def total(url: str, name: str, **labels: str) -> float:
    out = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out += float(s.value)
    return out


def busy(sim: SimProcess) -> float:
    return total(sim.url, "vllm:num_requests_running") + total(sim.url, "vllm:num_requests_waiting")


def fleet(*urls: str, extra: str = "", pool: str = "") -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
{extra}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{", ".join(urls)}]
{pool}
"""


def long_stream(max_tokens: int = 5000) -> dict[str, object]:
    return {"model": MODEL, "prompt": "x", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}


@pytest.fixture
def sim(sim_factory: SimFactory) -> Iterator[SimProcess]:
    yield sim_factory("--served-model-name", MODEL)


def test_200_clients_that_leave_after_the_first_token_abort_their_upstream_requests(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = gateway_factory(fleet(sim.url))
    n = 200

    async def leave_after_first_token(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", f"{gw.url}/v1/completions", json=long_stream()) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    return

    async def run() -> None:
        limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            await asyncio.gather(*(leave_after_first_token(client) for _ in range(n)))

    asyncio.run(run())
    # 5,000 tokens take the simulator far longer than this bound: only aborts empty it.
    until(lambda: busy(sim) == 0, "every upstream request aborted", within=15)
    assert total(sim.url, "vllm:request_success_total", finished_reason="abort") == n
    until(lambda: total(gw.admin, "fleetgate_requests_total", route="/v1/completions") == n, "all counted")
    assert total(gw.admin, "fleetgate_requests_total", status="499") == n  # counted once each, as 499


def test_streams_cut_by_the_drain_deadline_end_with_an_error_event_and_done(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = gateway_factory(fleet(sim.url, extra="shutdown: {pre_stop_delay: 0, drain_timeout: 1.5}"))
    results: list[list[str]] = []

    def stream() -> None:
        with httpx.stream("POST", f"{gw.url}/v1/completions", json=long_stream(), timeout=30) as r:
            results.append([line for line in r.iter_lines() if line.startswith("data: ")])

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    until(lambda: busy(sim) == 3, "three streams running")
    gw.proc.send_signal(signal.SIGTERM)
    # The admin port answers through the drain, so /metrics can be read while streams finish.
    until(lambda: httpx.get(f"{gw.admin}/admin/fleet").json()["draining"], "draining shown on the admin port")
    assert "fleetgate_requests" in httpx.get(f"{gw.admin}/metrics").text
    for t in threads:
        t.join(30)
    assert gw.proc.wait(30) == 0
    assert len(results) == 3
    for events in results:
        assert events[-1] == "data: [DONE]"
        assert '"error"' in events[-2] and "shut down" in events[-2]
    assert "Traceback" not in gw.log.read_text()
    until(lambda: busy(sim) == 0, "upstream requests released")


def test_pre_stop_delay_keeps_serving_while_ready_fails(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = gateway_factory(fleet(sim.url, extra="shutdown: {pre_stop_delay: 5, drain_timeout: 5}"))
    gw.proc.send_signal(signal.SIGTERM)
    until(lambda: httpx.get(f"{gw.url}/ready").status_code == 503, "/ready failing")
    r = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert gw.proc.wait(30) == 0


def test_a_frozen_endpoint_loses_its_traffic_and_a_slow_one_keeps_it(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    frozen = sim_factory("--served-model-name", MODEL, "--time-scale", "20")
    healthy = sim_factory("--served-model-name", MODEL, "--time-scale", "20")
    slow = sim_factory("--served-model-name", "slow", "--fault-first-byte-delay", "3")
    timeouts = "{first_byte_stream: 60, first_byte_nonstream: 60, stall_after: 1.5}"
    config = fleet(
        frozen.url,
        healthy.url,
        pool=f"""    health: {{interval: 0.2, timeout: 0.5}}
    timeouts: {timeouts}
  - name: slow
    models: [slow]
    endpoints: [{slow.url}]
    health: {{interval: 0.2, timeout: 0.5}}
    timeouts: {timeouts}""",
    )
    gw = gateway_factory(config)
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 4, "stream": True}

        async def one(client: httpx.AsyncClient) -> list[str]:
            async with client.stream("POST", f"{gw.url}/v1/completions", json=body) as r:
                assert r.status_code == 200
                return [line async for line in r.aiter_lines() if line.startswith("data: ")]

        async def run() -> list[list[str]]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(one(client) for _ in range(30)))

        results = asyncio.run(run())
        for events in results:
            assert events[-1] == "data: [DONE]" and not any('"error"' in e for e in events)
        assert total(healthy.url, "vllm:request_success_total") == 30  # the frozen one served none
        # A first byte slower than stall_after from an endpoint that answers its probes is not a fault.
        r = httpx.post(
            f"{gw.url}/v1/completions", json={"model": "slow", "prompt": "x", "max_tokens": 2}, timeout=30
        )
        assert r.status_code == 200, r.text
        fleet_view = httpx.get(f"{gw.admin}/admin/fleet").json()["pools"]["slow"]["endpoints"]
        assert all(e["routable"] for e in fleet_view)
    finally:
        frozen.proc.send_signal(signal.SIGCONT)


def test_a_client_that_stops_reading_ends_its_own_stream_and_blames_nobody(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    sim = sim_factory("--served-model-name", MODEL, "--time-scale", "20")
    gw = gateway_factory(
        fleet(sim.url, pool="    timeouts: {total: 3}\n    limits: {max_tokens_cap: 100000}")
    )
    body = b'{"model": "%s", "prompt": "x", "max_tokens": 100000, "ignore_eos": true, "stream": true}' % (
        MODEL.encode()
    )
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", gw.port))
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert s.recv(12).startswith(b"HTTP/1.1 200")
        # Now read nothing: the gateway's writes back up until its total deadline ends the stream.
        until(lambda: busy(sim) == 0, "the upstream request released", within=20)
    assert total(sim.url, "vllm:request_success_total", finished_reason="abort") == 1
    assert httpx.get(f"{gw.url}/ready").status_code == 200
    (endpoint,) = httpx.get(f"{gw.admin}/admin/fleet").json()["pools"]["main"]["endpoints"]
    assert endpoint["routable"]
    assert total(gw.admin, "fleetgate_upstream_errors_total") == 0
    r = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
    assert r.status_code == 200


class _DyingUpstream:
    """Answers probes, and every POST the way uvicorn does when the app under it died mid-request (a worker
    shutting down with requests in flight): 500, text/plain, "Internal Server Error"."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.posts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += conn.recv(65536)
            if head.startswith(b"POST"):
                self.posts += 1
                status, ctype, text = (
                    b"500 Internal Server Error",
                    b"text/plain; charset=utf-8",
                    b"Internal Server Error",
                )
            else:
                status, ctype, text = b"200 OK", b"application/json", b"{}"
            conn.sendall(
                b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, ctype, len(text), text)
            )

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_500_in_plain_text_reaches_the_client_as_an_openai_error(
    gateway_factory: GatewayFactory, stream: bool
) -> None:
    up = _DyingUpstream()
    try:
        gw = gateway_factory(fleet(up.url))
        body = {"model": MODEL, "prompt": "x", "max_tokens": 4, "stream": stream}
        r = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=30)
        assert up.posts == 1  # a 500 is never retried: the upstream may have done the work
        assert r.status_code == 500
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert err["code"] == 500 and err["type"] and up.url.split("//")[1] not in err["message"]
        assert "500" in err["message"]
    finally:
        up.close()
