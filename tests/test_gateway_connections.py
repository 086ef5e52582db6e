"""The public listener against clients that hold it open: slow headers and bodies, idle keep-alive sockets,
oversized headers and a flood of connections. Raw sockets against a real gateway process."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import GatewayFactory, GatewayProcess, SimProcess, spawn_sim

MODEL = "llama-8b"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    proc = spawn_sim(tmp_path_factory.mktemp("sim"), "--served-model-name", MODEL, "--time-scale", "20")
    yield proc
    proc.stop()


def guarded(gateway_factory: GatewayFactory, sim: SimProcess, listen: str) -> GatewayProcess:
    return gateway_factory(f"""
listen: {{host: 127.0.0.1, port: {{port}}, {listen}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sim.url}]
""")


def read_all(s: socket.socket, within: float = 10.0) -> bytes:
    """What the server sends until it closes the connection (bounded: a server that never closes fails)."""
    s.settimeout(within)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_slow_headers_and_bodies_time_out_with_408(gateway_factory: GatewayFactory, sim: SimProcess) -> None:
    gw = guarded(gateway_factory, sim, "header_timeout: 0.5, body_timeout: 0.5")
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and the rest never comes
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 408") and b"headers took longer" in reply
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 408") and b"body took longer" in reply
    # A client trickling one header byte at a time is bounded by the same deadline.
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        for byte in b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                s.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([s], [], [], 0.1)[0]:
                break  # the server answered (or closed) mid-trickle
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 408")


def test_idle_keep_alive_connections_are_closed(gateway_factory: GatewayFactory, sim: SimProcess) -> None:
    gw = guarded(gateway_factory, sim, "idle_timeout: 0.3")
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_all(s)  # the answer, then the server closes the idle connection itself
    assert reply.startswith(b"HTTP/1.1 200")


def test_oversized_headers_get_431_before_they_are_held(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = guarded(gateway_factory, sim, "max_header_bytes: 8192")
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 431") and b'"error"' in reply
    ok = httpx.get(f"{gw.url}/v1/models", headers={"x-small": "a" * 4000})
    assert ok.status_code == 200


def test_a_flood_of_idle_sockets_leaves_the_admin_port_and_later_clients_served(
    gateway_factory: GatewayFactory, sim: SimProcess
) -> None:
    gw = guarded(gateway_factory, sim, "max_connections: 20, header_timeout: 60")
    flood = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(20)]
    try:
        with socket.create_connection(("127.0.0.1", gw.port)) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_all(extra).startswith(b"HTTP/1.1 503")
        assert httpx.get(f"{gw.admin}/metrics").status_code == 200
        assert 'reason="too_many_connections"' in httpx.get(f"{gw.admin}/metrics").text
    finally:
        for s in flood:
            s.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            r = httpx.get(f"{gw.url}/v1/models")
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline
    assert r.status_code == 200
