"""`fleetgate status`: the fleet as the admin port's /admin/fleet reports it, as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from rich import box
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


def _cold_start(w: dict[str, Any]) -> str:
    if w.get("cold_start_s") is not None:
        return _seconds(w["cold_start_s"])
    if w.get("starting_s") is not None:
        return f"{w['starting_s']:.0f} s so far"
    return ""


def _table(*columns: str) -> Table:
    """Short cells on one line each (ids and URLs are pasted back); free text goes below the table."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for name in columns:
        table.add_column(name, no_wrap=True)
    return table


def render_fleet(fleet: dict[str, Any], console: Console) -> None:
    if fleet.get("draining"):
        console.print("[yellow]the gateway is shutting down[/yellow]")
    logs: set[str] = set()
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
            workers = pool["workers"]
            # GPUs and wakes only where some worker has them: the table stays within 80 columns.
            gpus = any(w.get("gpus") for w in workers)
            wakes = any(w.get("wakes") for w in workers)
            # Their URLs are in the endpoints table below.
            table = _table("worker", "state", "phase", "cold start", "restarts", *("wakes",) * wakes,
                           *("gpus",) * gpus)  # fmt: skip
            for w in workers:
                phase = w.get("phase") or ""
                if w.get("progress") is not None and w.get("state") == "starting":
                    phase += f" {w['progress']:.0%}"
                if w.get("state") == "starting" and w.get("last_error"):
                    phase = w["last_error"]  # a pod stuck Pending or crash-looping says why
                row = [w["id"], w["state"], phase, _cold_start(w), str(w.get("restarts", 0))]
                row += [str(w.get("wakes", 0))] * wakes
                row += [",".join(w.get("gpus") or []) or "-"] * gpus
                table.add_row(*row)
                if w.get("log"):
                    logs.add(str(Path(w["log"]).parent))
            console.print(table)
            for w in workers:
                if w.get("last_error") and w.get("state") in ("starting", "failed"):
                    first = str(w["last_error"]).splitlines()[0]
                    console.print(f"  {w['id']}: {first}", markup=False, highlight=False)
        endpoints = _table("endpoint", "url", "routable", "in flight")
        for e in pool.get("endpoints", []):
            routable = "yes" if e.get("routable") else "no"
            endpoints.add_row(e["name"], e["url"], routable, str(e.get("in_flight", 0)))
        console.print(endpoints)
        for e in pool.get("endpoints", []):
            if e.get("last_error"):
                console.print(f"  {e['name']}: {e['last_error']}", markup=False, highlight=False)
    for folder in sorted(logs):
        console.print(f"worker logs: {folder}/", markup=False, highlight=False)
