"""Background loops that keep the fleet state current: health probes, metric scrapes, model discovery.

They run beside the request path and never block it: each endpoint has its own task, every call has a
timeout, and the picker only reads what these loops wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

from fleetgate.fleet.state import Endpoint
from fleetgate.fleet.vllm_metrics import MetricsParseError, parse_vllm_metrics

log = logging.getLogger("fleetgate.fleet")


@dataclass(frozen=True)
class MonitorSettings:
    """A pool's `health:` and `scrape:` (defaults in config/pool.py), in seconds."""

    health_interval: float
    health_timeout: float
    health_path: str
    discovery_interval: float  # /v1/models is read again this often (adapters load, servers restart)
    scrape_interval: float
    scrape_timeout: float


class Monitor:
    """Watches one pool's endpoints; `on_change(endpoint)` runs after each reading (the flow queue's cue
    that room may have appeared)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: MonitorSettings,
        on_change: Callable[[Endpoint], None] = lambda e: None,
    ) -> None:
        self.session = session
        self.s = settings
        self.on_change = on_change
        self._tasks: dict[Endpoint, tuple[asyncio.Task[None], ...]] = {}

    def start(self, endpoints: list[Endpoint]) -> None:
        for e in endpoints:
            self.watch(e)

    def watch(self, e: Endpoint) -> None:
        """Start probing and scraping one endpoint (a worker that just became ready)."""
        if e not in self._tasks:
            soon = asyncio.Event()
            e.probe_soon = soon.set
            self._tasks[e] = (
                asyncio.create_task(self._health_loop(e, soon), name=f"health:{e.name}"),
                asyncio.create_task(self._scrape_loop(e), name=f"scrape:{e.name}"),
            )

    def unwatch(self, e: Endpoint) -> None:
        """Stop watching an endpoint that left the pool; its loops end on their own."""
        for t in self._tasks.pop(e, ()):
            t.cancel()

    async def stop(self) -> None:
        tasks = [t for pair in self._tasks.values() for t in pair]
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def _headers(self, e: Endpoint) -> dict[str, str]:
        return {"authorization": f"Bearer {e.api_key}"} if e.api_key else {}

    async def probe(self, e: Endpoint) -> None:
        """One health check: /health (or, for upstreams without one, /v1/models) answering 200."""
        timeout = aiohttp.ClientTimeout(total=self.s.health_timeout)
        try:
            async with self.session.get(
                e.url + self.s.health_path, headers=self._headers(e), timeout=timeout
            ) as r:
                status = r.status
                await r.read()
            if status == 404:  # a hosted endpoint (RunPod, Cloud Run) may only have the OpenAI routes
                await self.discover(e)
                e.probe_ok()
            elif status == 200:
                if not e.models or time.monotonic() - e.discovered_at > self.s.discovery_interval:
                    await self.discover(e)
                e.probe_ok()
            else:
                e.probe_failed(f"health check answered {status}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            e.probe_failed(f"health check failed: {type(err).__name__}")
        self.on_change(e)

    async def discover(self, e: Endpoint) -> None:
        """The model names (base models and loaded LoRA adapters) the endpoint serves."""
        timeout = aiohttp.ClientTimeout(total=self.s.health_timeout)
        async with self.session.get(e.url + "/v1/models", headers=self._headers(e), timeout=timeout) as r:
            if r.status != 200:
                raise ValueError(f"/v1/models answered {r.status}")
            data = orjson.loads(await r.read()).get("data") or []
        entries = [m for m in data if isinstance(m, dict) and "id" in m]
        e.models = frozenset(str(m["id"]) for m in entries)
        # vLLM lists a LoRA adapter with its base model as `parent`; base models have none.
        e.adapters = frozenset(str(m["id"]) for m in entries if m.get("parent") not in (None, m["id"]))
        e.discovered_at = time.monotonic()

    async def _health_loop(self, e: Endpoint, soon: asyncio.Event) -> None:
        while True:
            soon.clear()
            await self.probe(e)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.s.health_interval):
                    await soon.wait()  # the relay saw it answer a request with a 5xx: check it now

    async def _scrape_loop(self, e: Endpoint) -> None:
        timeout = aiohttp.ClientTimeout(total=self.s.scrape_timeout)
        misses = 0
        while True:
            started = time.monotonic()
            try:
                async with self.session.get(
                    e.url + "/metrics", headers=self._headers(e), timeout=timeout
                ) as r:
                    status = r.status
                    body = await r.read()
                if status == 200:
                    e.load = parse_vllm_metrics(body)
                    e.load_at = e.alive_at = time.monotonic()
                    e.sent_at_scrape = e.sent
                    misses = 0
                    self.on_change(e)
                else:
                    misses += 1
            except (aiohttp.ClientError, TimeoutError, MetricsParseError):
                misses += 1
            # An endpoint without vLLM metrics is routed on in-flight counts; ask it rarely after that.
            pause = self.s.scrape_interval if misses < 3 else max(self.s.scrape_interval, 5.0)
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))
