"""Large request bodies cost the gateway a bounded multiple of their bytes (issue 11, defect 6): a body's
parsed tree (ten times its size and more) lives only while it is validated and hashed, a few at a time, and
what the prompt hasher keeps for later turns is bounded in keys, not only in conversations."""

from __future__ import annotations

import gc
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.routing.prompt import PromptHasher
from tests.conftest import GatewayFactory, SimProcess, spawn_sim, until

MODEL = "sim"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def chat_body(i: int, parts: int) -> bytes:
    """A chat whose one message is `parts` tiny text parts: ~28 bytes each on the wire, hundreds parsed."""
    content = [{"type": "text", "text": f"r{i}"}] + [{"type": "text", "text": "ab"}] * (parts - 1)
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 1})


def in_flight(admin: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{admin}/metrics").text)
    return sum(s.value for f in families for s in f.samples if s.name == "fleetgate_endpoint_in_flight")


@pytest.fixture
def hanging_sim(tmp_path: Path) -> Iterator[SimProcess]:
    """A simulator that takes every request and never answers, so requests stay in flight at the gateway."""
    proc = spawn_sim(
        tmp_path, "--served-model-name", MODEL, "--fault-hang-rate", "1", "--max-model-len", "900000"
    )
    yield proc
    proc.stop()


def test_large_bodies_in_flight_cost_a_bounded_multiple_of_their_bytes(
    hanging_sim: SimProcess, gateway_factory: GatewayFactory
) -> None:
    # The simulator is busy for seconds parsing the bodies itself: judged by its probes and scrapes as usual,
    # it would look frozen or saturated on a loaded machine and the requests would wait in the queue instead.
    gw = gateway_factory(f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
pools:
  - name: main
    models: [{MODEL}]
    endpoints: [{hanging_sim.url}]
    health: {{interval: 1, timeout: 10}}
    scrape: {{interval: 1, timeout: 10, stale_after: 120}}
    timeouts: {{stall_after: 120}}
""")
    n, parts = 12, 108_000  # 12 bodies of ~3 MiB; each parses into ~30 MB of dicts and strings
    bodies = [chat_body(i, parts) for i in range(n)]
    raw = sum(len(b) for b in bodies)
    idle = rss_bytes(gw.proc.pid)
    peak = idle
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_bytes(gw.proc.pid))
            threading.Event().wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    socks = []
    try:
        for body in bodies:
            s = socket.create_connection(("127.0.0.1", gw.port))
            head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            s.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)
            socks.append(s)
        # Every request validated, hashed and sent upstream, where it stays.
        until(lambda: in_flight(gw.admin) == n, "all requests in flight upstream", within=60)
        held = rss_bytes(gw.proc.pid)
    finally:
        sampling = False
        sampler.join()
        for s in socks:
            s.close()
    grown = max(peak, held) - idle
    # Before the fix every tree was alive at once while the prompts waited for hashing threads (~10x the
    # bytes); now two at most, plus the bytes themselves.
    assert grown < 5 * raw, f"RSS grew {grown / 2**20:.0f} MiB for {raw / 2**20:.0f} MiB of bodies in flight"


def test_chains_kept_for_later_turns_are_bounded_in_keys() -> None:
    hasher = PromptHasher("none", cache_keys=50_000)
    prompts = [
        [{"role": "user", "content": f"conversation {i} " + "x" * 1_000_000}] for i in range(12)
    ]  # ~15,600 keys each
    for messages in prompts:
        assert hasher.info("chat", {"messages": messages}, None) is not None
        assert hasher.cached_keys <= 50_000
    assert hasher.cached_keys > 0
    # A later turn of the last conversation resumes from the kept chain: the same keys as hashing afresh.
    turn = [*prompts[-1], {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    resumed = hasher.info("chat", {"messages": turn}, None)
    fresh = PromptHasher("none").info("chat", {"messages": turn}, None)
    assert resumed is not None and fresh is not None and list(resumed.keys) == list(fresh.keys)


def test_kept_chains_take_little_memory_per_key() -> None:
    """What the hasher keeps of 24 distinct 1 MB prompts (~390,000 keys): packed, not Python ints in lists."""
    hasher = PromptHasher("none")
    prompts = [[{"role": "user", "content": f"c{i} " + "y" * 1_000_000}] for i in range(24)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for messages in prompts:
            hasher.info("chat", {"messages": messages}, None)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    keys = hasher.cached_keys
    assert keys > 300_000
    # 8 bytes a key packed, against ~40 (an int object and a list slot) before.
    assert kept < 12 * keys, f"{kept / keys:.1f} bytes per kept key"
