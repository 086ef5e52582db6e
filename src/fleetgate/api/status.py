"""`fleetgate status`: the fleet as the admin port's /admin/fleet reports it, as tables."""

from __future__ import annotations

from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

__all__ = ["admin_url", "fetch_fleet", "render_fleet"]


def admin_url(admin: str) -> str:
    """The admin base URL: `127.0.0.1:8001` and `:8001` are taken as plain http on that address."""
    admin = admin.strip().rstrip("/")
    if "://" not in admin:
        admin = f"http://{'127.0.0.1' if admin.startswith(':') else ''}{admin}"
    return admin


def fetch_fleet(admin: str) -> dict[str, Any]:
    """GET /admin/fleet; OSError with a message in the user's words when it cannot be read."""
    base = admin_url(admin)
    try:
        r = httpx.get(f"{base}/admin/fleet", timeout=5.0)
    except httpx.ConnectError:
        raise OSError(
            f"nothing answers at {base}: is fleetgate running (`fleetgate up`, `serve` or `make run`)? "
            "Its admin port is 8001 unless --admin-port moved it; point --admin at it"
        ) from None
    except httpx.HTTPError as e:
        raise OSError(f"cannot read {base}/admin/fleet: {e or type(e).__name__}") from None
    if r.status_code == 404:
        raise OSError(
            f"{base} answers but has no /admin/fleet: is it fleetgate's admin port (not its API port)?"
        )
    try:
        r.raise_for_status()
        data: dict[str, Any] = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise OSError(f"cannot read {base}/admin/fleet: {e or type(e).__name__}") from None
    return data


def _seconds(value: object) -> str:
    return "" if value is None else f"{value:.1f} s" if isinstance(value, int | float) else str(value)


def render_fleet(fleet: dict[str, Any], console: Console) -> None:
    if fleet.get("draining"):
        console.print("[yellow]the gateway is shutting down[/yellow]")
    for name, pool in fleet.get("pools", {}).items():
        queue = pool.get("queue", {})
        head = f"[bold]{name}[/bold]: {queue.get('waiting', 0)} waiting"
        if "workers" in pool:
            head += f", {len(pool['workers'])} workers, {pool.get('workers_desired', 0)} wanted"
        console.print(head)
        if pool.get("failure"):
            console.print(f"  [red]failed:[/red] {pool['failure']}")
        if "workers" in pool:
            table = Table("worker", "state", "phase", "cold start", "restarts", "wakes", "url", "gpus")
            for w in pool["workers"]:
                phase = w.get("phase") or ""
                if w.get("progress") is not None and w.get("state") == "starting":
                    phase += f" {w['progress']:.0%}"
                table.add_row(
                    w["id"], w["state"], phase, _seconds(w.get("cold_start_s")), str(w.get("restarts", 0)),
                    str(w.get("wakes", 0)), w.get("url", ""), ",".join(w.get("gpus") or []) or "-",
                )  # fmt: skip
            console.print(table)
        endpoints = Table("endpoint", "url", "routable", "in flight", "last error")
        for e in pool.get("endpoints", []):
            endpoints.add_row(
                e["name"], e["url"], "yes" if e.get("routable") else "no", str(e.get("in_flight", 0)),
                e.get("last_error") or "",
            )  # fmt: skip
        console.print(endpoints)
