"""A stream whose upstream goes quiet costs the gateway nothing while it waits: the silence is judged every
`check` seconds (half of stall_after), not in a loop that spins between the first check and the verdict."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import httpx

from tests.conftest import GatewayFactory, SimFactory

MODEL = "llama-8b"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # clock ticks (USER_HZ is 100 on Linux)


def test_a_quiet_upstream_costs_no_cpu_until_it_is_judged_frozen(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    sim = sim_factory("--served-model-name", MODEL, "--time-scale", "20")
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sim.url}]
    health: {{interval: 0.2, timeout: 0.5}}
    timeouts: {{stall_after: 10}}
    limits: {{max_tokens_cap: 100000}}
"""
    gw = gateway_factory(config)
    body = b'{"model": "%s", "prompt": "x", "max_tokens": 100000, "ignore_eos": true, "stream": true}' % (
        MODEL.encode()
    )
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        sim.proc.send_signal(signal.SIGSTOP)
        try:
            before = cpu_seconds(gw.proc.pid)
            s.settimeout(60)
            got = b""
            while b"[DONE]" not in got[-64:]:
                data = s.recv(65536)
                assert data, "the gateway closed the stream without an error event"
                got += data
            spent = cpu_seconds(gw.proc.pid) - before
        finally:
            sim.proc.send_signal(signal.SIGCONT)
    # The stream ended as a frozen upstream's does: an error event, then [DONE].
    assert b"stopped answering mid-stream" in got
    # ~10 s of silence: the gateway probes and scrapes (a few % of a core) and judges the silence every 5 s;
    # before, it spun from the first judgement to the verdict (5 s of a core, or whatever share it got).
    assert spent < 1.0, f"the gateway spent {spent:.2f} CPU s while its upstream was quiet"
    assert httpx.get(f"{gw.admin}/metrics").status_code == 200


def test_a_client_leaving_mid_stream_leaves_no_timer_behind(
    gateway_factory: GatewayFactory, sim_factory: SimFactory
) -> None:
    """The stream's timer goes with the stream: nothing fires into a finished relay (an error in the log)."""
    sim = sim_factory("--served-model-name", MODEL, "--time-scale", "20")
    # Answers only after 1 s: a request to it outlasts the timers' period (0.5 s) by construction.
    late = sim_factory("--served-model-name", "late", "--fault-first-byte-delay", "1")
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{sim.url}]
    health: {{interval: 0.2, timeout: 0.5}}
    timeouts: {{stall_after: 1}}
    limits: {{max_tokens_cap: 100000}}
  - name: late
    models: [late]
    endpoints: [{late.url}]
"""
    gw = gateway_factory(config)
    body = b'{"model": "%s", "prompt": "x", "max_tokens": 100000, "ignore_eos": true, "stream": true}' % (
        MODEL.encode()
    )
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
    r = httpx.post(
        f"{gw.url}/v1/completions", json={"model": "late", "prompt": "x", "max_tokens": 2}, timeout=30
    )
    assert r.status_code == 200
    log = gw.log.read_text()
    assert "Traceback" not in log and "Exception in callback" not in log, log[-3000:]
