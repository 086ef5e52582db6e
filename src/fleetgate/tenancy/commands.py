"""`fleetgate keys create|list|revoke|rotate` and `fleetgate usage`: straight to the store (no gateway
needed); running gateways see a change within `tenancy.refresh_interval` through the version row."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from fleetgate.tenancy.keys import KeyRecord
from fleetgate.tenancy.requests import KeyRequest
from fleetgate.tenancy.store import KeyStore, open_store

__all__ = [
    "DATABASE_ENV",
    "create_key",
    "database_url",
    "list_keys",
    "revoke_key",
    "rotate_key",
    "usage_report",
]

DATABASE_ENV = "FLEETGATE_DATABASE"
T = TypeVar("T")


class NoDatabaseError(Exception):
    pass


def database_url(given: str | None, config: Path | None) -> str:
    """--database > the fleet file's tenancy.database > $FLEETGATE_DATABASE."""
    if given:
        return given
    if config is not None:
        from fleetgate.config import load_config

        url = load_config(config).tenancy.database
        if url:
            return url
    env = os.environ.get(DATABASE_ENV)
    if env:
        return env
    raise NoDatabaseError(
        "no key store: give --database sqlite:///path (or postgresql://...), a fleet file with "
        f"tenancy.database (--config), or set {DATABASE_ENV}"
    )


def _run(url: str, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    async def go() -> T:
        store = await open_store(url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def create_key(url: str, request: KeyRequest) -> tuple[KeyRecord, str]:
    return _run(
        url,
        lambda s: s.create(
            request.tenant,
            name=request.name,
            priority=request.priority,
            models=request.models,
            pools=request.pools,
            limits=request.limits(),
            expires_at=request.expiry(),
            metadata=request.metadata,
        ),
    )


def list_keys(url: str, tenant: str | None, include_revoked: bool) -> list[KeyRecord]:
    return _run(url, lambda s: s.list_keys(tenant, include_revoked))


def revoke_key(url: str, key_id: str) -> bool:
    return _run(url, lambda s: s.revoke(key_id))


def rotate_key(url: str, key_id: str) -> tuple[KeyRecord, str] | None:
    return _run(url, lambda s: s.rotate(key_id))


def usage_report(url: str, since_day: str | None, tenant: str | None) -> list[dict[str, Any]]:
    return _run(url, lambda s: s.usage_summary(since_day, tenant))


def render_keys(records: list[KeyRecord], console: Console) -> None:
    table = Table("id", "tenant", "name", "prefix", "priority", "limits", "expires", "state")
    now = time.time()
    for r in records:
        lim = r.limits
        parts = [f"{k}={v}" for k, v in (("rpm", lim.rpm), ("tpm", lim.tpm), ("conc", lim.concurrency)) if v]
        if lim.budget is not None:
            parts.append(f"budget={lim.budget.amount:g} {lim.budget.unit}/{lim.budget.window}")
        expires = "" if r.expires_at is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.expires_at))
        state = "revoked" if r.revoked_at is not None else ("live" if r.live(now) else "expired")
        row = [r.id, r.tenant, r.name, r.prefix + "…", str(r.priority), " ".join(parts), expires, state]
        table.add_row(*row)
    console.print(table)


def render_usage(rows: list[dict[str, Any]], console: Console) -> None:
    columns = ["day", "tenant", "model", "requests", "prompt", "cached", "output", "cost (USD)", "cache hits"]
    table = Table(*columns)
    for r in rows:
        table.add_row(
            r["day"], r["tenant"], r["model"], str(r["requests"]), str(r["prompt_tokens"]),
            str(r["cached_tokens"]), str(r["output_tokens"]), f"{r['cost']:.4f}", str(r["cache_hits"]),
        )  # fmt: skip
    console.print(table)
