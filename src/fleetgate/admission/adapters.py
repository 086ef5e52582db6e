"""LoRA adapters loaded on demand: a request for a declared adapter that no endpoint has loaded waits while
vLLM's `/v1/load_lora_adapter` runs on the best endpoint (one load per adapter at a time; others asking for
the same adapter wait for that load). The picker never does I/O: it sees the adapter once it is loaded.

The best endpoint for a load: routable, with a free adapter slot if one has (vLLM's `max_lora` from
`vllm:lora_requests_info`), then the least busy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import aiohttp

from fleetgate.fleet.state import Endpoint
from fleetgate.protocol import OpenAIError, ServiceUnavailableError, error_from_body

__all__ = ["AdapterLoader"]

log = logging.getLogger("fleetgate.adapters")


def _load_target(endpoints: Sequence[Endpoint]) -> Endpoint | None:
    def rank(e: Endpoint) -> tuple[bool, int]:
        max_lora = e.load.max_lora if e.load is not None else None
        full = max_lora is not None and len(e.adapters) >= max_lora
        return (full, e.in_flight)

    candidates = [e for e in endpoints if e.routable()]
    return min(candidates, key=rank) if candidates else None


class AdapterLoader:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoints: Sequence[Endpoint],
        paths: Mapping[str, str],
        timeout: float,  # seconds one load may take (the pool's timeouts.total)
    ) -> None:
        self.session = session
        self.endpoints = endpoints
        self.paths = dict(paths)
        self.timeout = timeout
        self._loading: dict[str, asyncio.Task[None]] = {}
        self.loads = 0

    def needed(self, adapter: str | None) -> bool:
        if adapter is None or adapter not in self.paths:
            return False
        return not any(e.routable() and adapter in e.models for e in self.endpoints)

    async def ensure(self, adapter: str) -> None:
        """Return once some routable endpoint has `adapter` loaded; raise if loading it failed."""
        task = self._loading.get(adapter)
        if task is None:
            task = asyncio.create_task(self._load(adapter), name=f"load adapter {adapter}")
            self._loading[adapter] = task
            task.add_done_callback(lambda _: self._loading.pop(adapter, None))
        await asyncio.shield(task)

    async def _load(self, adapter: str) -> None:
        target = _load_target(self.endpoints)
        if target is None:
            raise ServiceUnavailableError(f"no endpoint can load adapter '{adapter}' now")
        headers = {"authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        body = {"lora_name": adapter, "lora_path": self.paths[adapter]}
        try:
            async with self.session.post(
                f"{target.url}/v1/load_lora_adapter",
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as r:
                status, text = r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ServiceUnavailableError(
                f"loading adapter '{adapter}' on {target.name} failed: {type(e).__name__}"
            ) from None
        if status != 200 and b"already been loaded" not in text:
            error = error_from_body(text, status)
            log.warning("loading adapter %s on %s: %s %s", adapter, target.name, status, error.message)
            raise OpenAIError(f"loading adapter '{adapter}' failed: {error.message}", status=503)
        self.loads += 1
        log.info("adapter %s loaded on %s", adapter, target.name)
        target.models = target.models | {adapter}
        target.adapters = target.adapters | {adapter}
