"""The usage ledger: rows written in batches off the request path, flushed in the drain on SIGTERM, summed
per tenant/model/day; a bounded buffer whose overflow is counted. Its token sums equal the simulators' own
vllm:prompt_tokens_total / vllm:generation_tokens_total after a run with retries and a SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.config import PriceConfig
from fleetgate.tenancy.ledger import Ledger
from fleetgate.tenancy.rows import UsageRow
from fleetgate.tenancy.runtime import Usage, cost
from fleetgate.tenancy.store import KeyStore, open_store
from tests.conftest import GatewayFactory, SimFactory, until


def sim_counter(url: str, name: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == name:
                total += float(s.value)
    return total


def gateway_counter(admin: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{admin}/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += float(s.value)
    return total


def test_usage_reads_cached_prompt_tokens_and_prices_them_apart() -> None:
    u = Usage.of({"prompt_tokens": 1000, "completion_tokens": 10,
                  "prompt_tokens_details": {"cached_tokens": 800}})  # fmt: skip
    assert u == Usage(1000, 800, 10)
    plain = {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": None}
    assert Usage.of(plain) == Usage(5, 0, 2)
    price = PriceConfig(prompt=1.0, cached_prompt=0.1, output=4.0)
    assert cost(price, u) == pytest.approx((200 * 1.0 + 800 * 0.1 + 10 * 4.0) / 1e6)
    assert cost(PriceConfig(prompt=1.0), u) == pytest.approx((1000 + 0) / 1e6)  # cached at the full price


def _row(i: int, tenant: str = "acme", model: str = "m") -> UsageRow:
    return UsageRow(at=time.time(), request_id=f"r{i}", tenant=tenant, key_id=None, model=model, pool="p",
                    endpoint="/v1/completions", status=200, prompt_tokens=10, cached_tokens=4,
                    output_tokens=3, latency_ms=1.0, cost=0.5)  # fmt: skip


class _Away(KeyStore):
    """The real SQLite store, unreachable while `away` is set."""

    away = True

    async def write_usage(self, rows: object) -> int:
        if self.away:
            raise ConnectionError("database away")
        return await super().write_usage(rows)  # type: ignore[arg-type]


async def test_a_full_buffer_counts_and_logs_what_it_drops_and_keeps_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = await open_store(f"sqlite:///{tmp_path}/u.db")
    store = _Away(real.engine)
    dropped: list[int] = []
    ledger = Ledger(store, batch_size=2, interval=0.05, capacity=5, on_drop=dropped.append)
    ledger.start()
    for i in range(8):
        ledger.record(_row(i))
    assert ledger.dropped == 3 and len(dropped) == 3
    assert "usage ledger buffer full" in caplog.text
    store.away = False  # the database is back: the kept rows go out, in order, in batches
    deadline = time.monotonic() + 10
    while ledger.written < 5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await ledger.stop()
    rows = await real.usage_summary()
    assert rows == [{"tenant": "acme", "model": "m", "day": rows[0]["day"], "requests": 5,
                     "prompt_tokens": 50, "cached_tokens": 20, "output_tokens": 15, "cost": 2.5,
                     "cache_hits": 0}]  # fmt: skip
    await real.close()


class _Slow(KeyStore):
    """The real SQLite store, whose next write waits at `gate` (a slow disk, a busy PostgreSQL)."""

    entered: asyncio.Event
    gate: asyncio.Event

    async def write_usage(self, rows: object) -> int:
        self.entered.set()
        await self.gate.wait()
        return await super().write_usage(rows)  # type: ignore[arg-type]


async def test_stopping_during_a_write_loses_no_row(tmp_path: Path) -> None:
    """SIGTERM while the writer is mid-batch: the batch is written (once), then the rest. Cancelling the
    writer there dropped the batch it had taken from the buffer (seen as rows missing after the benchmark's
    in-process runs)."""
    real = await open_store(f"sqlite:///{tmp_path}/u.db")
    store = _Slow(real.engine)
    store.entered, store.gate = asyncio.Event(), asyncio.Event()
    ledger = Ledger(store, batch_size=4, interval=0.05, capacity=100)
    ledger.start()
    for i in range(10):
        ledger.record(_row(i))
    await store.entered.wait()  # the writer holds a batch of 4, waiting on the database
    stopping = asyncio.ensure_future(ledger.stop())
    await asyncio.sleep(0)  # stop() has begun
    store.gate.set()
    await stopping
    rows = await real.usage_summary()
    assert [r["requests"] for r in rows] == [10] and ledger.written == 10
    await real.close()


def test_ledger_sums_equal_the_simulators_counters_after_retries_disconnects_and_sigterm(
    gateway_factory: GatewayFactory, sim_factory: SimFactory, tmp_path: Path
) -> None:
    flaky = sim_factory("--served-model-name", "m-exact", "--time-scale", "20", "--seed", "1",
                        "--fault-error-rate", "503=0.4")  # fmt: skip
    steady = sim_factory("--served-model-name", "m-exact", "--time-scale", "20", "--seed", "2")
    cut = sim_factory("--served-model-name", "m-cut", "--time-scale", "20", "--seed", "3")
    db = tmp_path / "usage.db"
    config = f"""
listen: {{host: 127.0.0.1, port: {{port}}}}
admin: {{host: 127.0.0.1, port: {{admin_port}}}}
keys:
  - {{name: game, key: sk-game}}
  - {{name: travel, key: sk-travel}}
shutdown: {{pre_stop_delay: 0.1, drain_timeout: 30}}
tenancy:
  database: sqlite:///{db}
  ledger: {{interval: 3600, batch_size: 100000}}   # nothing is written before the drain's flush
pools:
  - name: exact
    models: [m-exact]
    endpoints: [{flaky.url}, {steady.url}]
    retries: {{attempts: 4, backoff_base: 0.001}}
  - name: cut
    models: [m-cut]
    endpoints: [{cut.url}]
"""
    gw = gateway_factory(config)

    def call(key: str, model: str, stream: bool, n: int) -> httpx.Response:
        body = {"model": model, "prompt": "word " * (5 + n), "max_tokens": 3 + n % 7, "stream": stream,
                "ignore_eos": True}  # fmt: skip
        return httpx.post(f"{gw.url}/v1/completions", json=body, headers={"authorization": f"Bearer {key}"},
                          timeout=30)  # fmt: skip

    statuses = [call("sk-game" if i % 3 else "sk-travel", "m-exact", i % 2 == 0, i).status_code
                for i in range(24)]  # fmt: skip
    assert statuses == [200] * 24
    assert gateway_counter(gw.admin, "fleetgate_retries_total") > 0  # the flaky sim's 503s were retried

    # Streams whose clients leave after the first event.
    for _ in range(3):
        body = {"model": "m-cut", "prompt": "go " * 20, "max_tokens": 400, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{gw.url}/v1/completions", json=body, timeout=30,
                          headers={"authorization": "Bearer sk-game"}) as r:  # fmt: skip
            assert r.status_code == 200
            next(r.iter_raw())

    # Streams in flight when SIGTERM comes: they finish in the drain.
    finished: list[int] = []

    def long_stream() -> None:
        body = {"model": "m-exact", "prompt": "long " * 30, "max_tokens": 150, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
        with httpx.stream("POST", f"{gw.url}/v1/completions", json=body, timeout=60,
                          headers={"authorization": "Bearer sk-travel"}) as r:  # fmt: skip
            text = "".join(r.iter_text())
        if '"completion_tokens":150' in text:
            finished.append(1)

    started = gateway_counter(gw.admin, "fleetgate_time_to_first_event_seconds_count")
    threads = [threading.Thread(target=long_stream) for _ in range(3)]
    for t in threads:
        t.start()
    until(lambda: gateway_counter(gw.admin, "fleetgate_time_to_first_event_seconds_count") >= started + 3,
          "the long streams to start")  # fmt: skip
    assert not db.exists() or _sums(db, "m-exact")[0] == 0  # nothing written yet
    gw.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert gw.proc.wait(60) == 0
    assert len(finished) == 3

    prompt, output, requests = _sums(db, "m-exact")
    assert requests == 24 + 3
    sims = (flaky.url, steady.url)
    assert prompt == sum(sim_counter(u, "vllm:prompt_tokens_total") for u in sims)
    assert output == sum(sim_counter(u, "vllm:generation_tokens_total") for u in sims)
    # The clients that left: rows with status 499, output counted as the events relayed before they left,
    # never more than the engine made (it may have made a few more before the abort reached it).
    until(lambda: sim_counter(cut.url, "vllm:request_success_total") >= 3, "the cut streams to be aborted")
    with _db(db) as conn:
        cut_rows = conn.execute("select status, output_tokens from usage where model = 'm-cut'").fetchall()
    assert [s for s, _ in cut_rows] == [499] * 3
    assert 3 <= sum(o for _, o in cut_rows) <= sim_counter(cut.url, "vllm:generation_tokens_total")

    report = subprocess.run([sys.executable, "-m", "fleetgate", "usage", "--database", f"sqlite:///{db}",
                             "--json"], capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    by = {(r["tenant"], r["model"]): r for r in json.loads(report.stdout)}
    assert by[("travel", "m-exact")]["requests"] == 8 + 3 and by[("game", "m-exact")]["requests"] == 16
    assert by[("game", "m-exact")]["prompt_tokens"] + by[("travel", "m-exact")]["prompt_tokens"] == prompt


def _db(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path))


def _sums(path: Path, model: str) -> tuple[int, int, int]:
    with _db(path) as conn:
        row = conn.execute(
            "select coalesce(sum(prompt_tokens), 0), coalesce(sum(output_tokens), 0), count(*) from usage "
            "where model = ?", (model,),
        ).fetchone()  # fmt: skip
    return int(row[0]), int(row[1]), int(row[2])
