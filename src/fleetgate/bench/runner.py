"""Running a benchmark: worker processes that keep the schedule, a coordinator that shows and collects.

Each level runs on `processes` worker processes, each with its own event loop, HTTP connection pool and
workload (seeded `seed + worker`), so the load generator is not the bottleneck. Open-loop levels give every
worker every `processes`-th arrival of one global schedule; closed-loop levels split the clients. Workers
start on a common absolute time and report counts through shared memory while they run, records at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from fleetgate.bench.client import build_body, send
from fleetgate.bench.load import Level, arrivals, share
from fleetgate.bench.records import RequestRecord, RequestSpec
from fleetgate.bench.sizing import Sizer
from fleetgate.bench.workloads import WorkloadSettings, make_workload

# Progress slots per worker in shared memory: sent, finished, failed, output tokens.
SLOTS = 4


@dataclass(frozen=True)
class RunConfig:
    url: str  # base URL ending in /v1
    model: str
    workload: WorkloadSettings
    levels: list[Level]
    duration: float | None
    num_requests: int | None
    seed: int = 0
    processes: int = 2
    warmup: float = 0.0
    cooldown: float = 0.0
    timeout: float = 600.0
    api_key: str | None = None
    priority_header: bool = False
    sizer_ratio: float = 1.0
    vocab_size: int = 32000
    extra_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    cfg: RunConfig
    level_index: int
    worker: int
    start: float  # time.monotonic() at which the level starts, shared by all workers


def headers_for(cfg: RunConfig, spec: RequestSpec, keys: dict[str, str | None]) -> dict[str, str]:
    h = {"content-type": "application/json", **cfg.extra_headers}
    key = keys.get(spec.tenant or "") or cfg.api_key
    if key:
        h["authorization"] = f"Bearer {key}"
    if cfg.priority_header and spec.priority is not None:
        h["x-fleetgate-priority"] = str(spec.priority)
    return h


async def _worker(job: _Job, progress: Any, out: Connection) -> None:
    cfg = job.cfg
    level = cfg.levels[job.level_index]
    n = cfg.processes
    w = job.worker
    sizer = Sizer(cfg.sizer_ratio, cfg.vocab_size)
    workload = make_workload(cfg.workload, sizer, cfg.seed, worker=job.level_index * n + w)
    keys = {t.name: t.api_key for t in cfg.workload.tenants}
    records: list[RequestRecord] = []
    base = w * SLOTS
    # Idle connections go before the target's (uvicorn's 5 s), so none is reused as the server closes it.
    connector = aiohttp.TCPConnector(
        limit=0, ttl_dns_cache=300, enable_cleanup_closed=True, keepalive_timeout=3.0
    )
    timeout = aiohttp.ClientTimeout(total=cfg.timeout, sock_connect=10)
    deadline = None if cfg.duration is None else job.start + cfg.duration
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def one(spec: RequestSpec, scheduled: float | None, index: int) -> None:
            """Send one request; `scheduled` is None for a closed-loop client (it has no schedule to lag)."""
            record = RequestRecord(
                index=index,
                api=spec.api,
                tenant=spec.tenant,
                priority=spec.priority,
                scheduled=scheduled or 0.0,
                sent=scheduled or 0.0,
                planned_input_tokens=spec.input_tokens,
                planned_output_tokens=spec.max_tokens,
                level=job.level_index,
                session=spec.session,
                turn=spec.turn,
            )
            records.append(record)
            progress[base] += 1
            on_text = (lambda text: workload.on_response(spec, text)) if workload.needs_text else None
            body = build_body(spec, cfg.model)
            await send(session, cfg.url, spec, record, body, headers_for(cfg, spec, keys), job.start, on_text)
            if scheduled is None:
                record.scheduled = record.sent
            if not workload.needs_text:
                workload.on_response(spec, None if not record.ok else "")
            progress[base + 1] += 1
            if not record.ok:
                progress[base + 2] += 1
            progress[base + 3] += record.completion_tokens

        # First-use costs (text pools, a trace's prompts) are paid before the clock starts, not as lag.
        warm = random.Random(0)
        sizer.text(8, warm)
        sizer.text_zh(8, warm)
        specs: list[RequestSpec] = []
        if level.mode == "trace":
            specs = [workload.next_request() for _ in range(len(workload))]  # type: ignore[arg-type]
        await _sleep_until(job.start)
        if level.mode == "concurrency":
            clients = share(int(level.value), n, w)
            budget = [share(cfg.num_requests, n, w)] if cfg.num_requests is not None else None
            counter = iter(range(w, 1 << 62, n))

            async def client() -> None:
                while True:
                    if budget is not None:
                        if budget[0] <= 0:
                            return
                        budget[0] -= 1
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        return
                    await one(workload.next_request(), None, next(counter))

            await asyncio.gather(*(client() for _ in range(clients)))
        else:
            if level.mode == "trace":
                times = [s.at or 0.0 for s in specs]
            else:
                times = arrivals(level, cfg.seed + job.level_index, cfg.duration, cfg.num_requests)
            tasks: set[asyncio.Task[None]] = set()
            for i in range(w, len(times), n):
                await _sleep_until(job.start + times[i])
                spec = specs[i] if specs else workload.next_request()
                task = asyncio.ensure_future(one(spec, times[i], i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
    out.send(records)
    out.close()


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _worker_main(job: _Job, progress: Any, out: Connection) -> None:
    import uvloop

    # A full collection over thousands of live records stalls the loop for milliseconds, which shows up as
    # schedule lag; what exists now is permanent, and young garbage is cheap to collect often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_worker(job, progress, out))


Progress = Callable[[Level, float, list[int]], None]


def run_level(
    cfg: RunConfig, index: int, on_progress: Progress | None = None
) -> tuple[list[RequestRecord], float]:
    """Run one level on `cfg.processes` workers; the records and the level's measured duration."""
    ctx = mp.get_context("fork")
    progress = ctx.Array("q", SLOTS * cfg.processes, lock=False)
    start = time.monotonic() + 0.5  # time for every worker to be up before the first send
    pipes = []
    procs = []
    for w in range(cfg.processes):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker_main, args=(_Job(cfg, index, w, start), progress, child), daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    records: list[RequestRecord] = []
    pending = dict(enumerate(pipes))
    try:
        while pending:
            for w, pipe in list(pending.items()):
                if pipe.poll(0.25 / max(len(pending), 1)):
                    try:
                        records += pipe.recv()
                    except EOFError:
                        raise RuntimeError(f"bench worker {w} died (exit code {procs[w].exitcode})") from None
                    del pending[w]
                elif not procs[w].is_alive() and not pipe.poll():
                    raise RuntimeError(f"bench worker {w} died (exit code {procs[w].exitcode})")
            if on_progress is not None:
                totals = [sum(progress[w * SLOTS + k] for w in range(cfg.processes)) for k in range(SLOTS)]
                on_progress(cfg.levels[index], max(0.0, time.monotonic() - start), totals)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(5)
    elapsed = max(r.sent + (r.e2e or 0.0) for r in records) if records else 0.0
    duration = cfg.duration if cfg.duration is not None else elapsed
    for r in records:
        if cfg.duration is not None and (r.sent < cfg.warmup or r.sent > cfg.duration - cfg.cooldown):
            r.excluded = True
    window = duration - (cfg.warmup + cfg.cooldown if cfg.duration is not None else 0.0)
    records.sort(key=lambda r: r.sent)
    return records, max(window, 1e-9)
