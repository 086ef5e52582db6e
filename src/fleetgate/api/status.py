"""`fleetgate status`: the fleet as the admin port's /admin/fleet reports it, as tables."""

from __future__ import annotations

from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

__all__ = ["fetch_fleet", "render_fleet"]


def fetch_fleet(admin: str) -> dict[str, Any]:
    """GET /admin/fleet; OSError when the gateway cannot be reached or answers badly."""
    try:
        r = httpx.get(f"{admin.rstrip('/')}/admin/fleet", timeout=5.0)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise OSError(str(e) or type(e).__name__) from None
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
        if pool.get("blocked"):
            console.print(f"  [red]cannot start a worker:[/red] {pool['blocked']}")
        api = (pool.get("discovery") or {}).get("api")
        if api is not None and not api.get("connected"):
            console.print(
                f"  [yellow]Kubernetes API unreachable for {_seconds(api.get('down_for_s'))}:[/yellow] "
                f"{api.get('last_error')}; serving the last known endpoints"
            )
        scaling = pool.get("scaling")
        if scaling is not None:
            role = "this replica" if scaling.get("leader") else scaling.get("holder") or "nobody yet"
            console.print(f"  scaling leader: {role}")
        if "workers" in pool:
            table = Table("worker", "state", "phase", "cold start", "restarts", "wakes", "url", "gpus")
            for w in pool["workers"]:
                phase = w.get("phase") or ""
                if w.get("progress") is not None and w.get("state") == "starting":
                    phase += f" {w['progress']:.0%}"
                if w.get("state") == "starting" and w.get("last_error"):
                    phase = w["last_error"]  # a pod stuck Pending or crash-looping says why
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
