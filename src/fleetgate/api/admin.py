"""The operator's side (its own address, never tenant-facing): Prometheus metrics and the fleet's state."""

from __future__ import annotations

import time
from typing import Any

import orjson
from prometheus_client import generate_latest

from fleetgate.api.admin_keys import handles, serve_tenancy
from fleetgate.api.asgi import Receive, Scope, Send, error, reply
from fleetgate.api.gateway import Gateway, Pool
from fleetgate.protocol import NotFoundError

__all__ = ["AdminApp"]


class AdminApp:
    """Operator-facing: metrics and fleet state, on the admin address only."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # served with lifespan="off": the public app owns startup and shutdown
        path = scope["path"]
        if path == "/metrics":
            self.gw.metrics.refresh({name: len(p.flow) for name, p in self.gw.pools.items()})
            if self.gw.workers is not None:
                self.gw.workers.report()
            self._kubernetes_metrics()
            body = generate_latest(self.gw.metrics.registry)
            headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif path == "/admin/fleet":
            now = time.monotonic()
            pools = {name: _pool_view(self.gw, p, now) for name, p in self.gw.pools.items()}
            await reply(send, 200, orjson.dumps({"draining": self.gw.draining, "pools": pools}), "admin")
        elif handles(path):
            await serve_tenancy(self.gw.tenancy.store, scope, receive, send)
        elif path == "/health":
            await reply(send, 200, b"", "admin")
        else:
            await error(send, NotFoundError(f"no route {path}"), "admin")

    def _kubernetes_metrics(self) -> None:
        now = time.monotonic()
        m = self.gw.metrics
        for name, p in self.gw.pools.items():
            if p.source is not None:
                h = p.source.health
                down = None if h.down_since is None else now - h.down_since
                m.discovery_status(name, h.connected, down, h.relists, h.events)
        kube = self.gw.workers.kube if self.gw.workers is not None else None
        if kube is not None:
            m.scaling_leader.set(1 if kube.elector.is_leader else 0)


def _pool_view(gw: Gateway, pool: Pool, now: float) -> dict[str, Any]:
    endpoints = []
    for e in pool.route.endpoints:
        view = e.snapshot(now, pool.config.scrape.stale_after)
        view["saturated"] = pool.route.router.saturation.of(e, now)
        view["approx_index_blocks"] = pool.state.approx.blocks(e.name)
        if e.kv_events is not None:
            view["precise_index_blocks"] = pool.state.precise.blocks(e.name)
        endpoints.append(view)
    return {
        "routing": {
            "picker": pool.config.routing.picker,
            "scorers": pool.config.routing.scorers,
            "tokenizer": pool.config.routing.tokenizer,
        },
        "queue": {"waiting": len(pool.flow), "shed": pool.flow.shed, "timed_out": pool.flow.timed_out},
        "sessions": len(pool.state.sessions),
        "endpoints": endpoints,
        **({"discovery": pool.source.snapshot(now)} if pool.source is not None else {}),
        **_workers_view(gw, pool, now),
    }


def _workers_view(gw: Gateway, pool: Pool, now: float) -> dict[str, Any]:
    wp = pool.workers
    if wp is None or gw.workers is None:
        return {}
    name = pool.config.name
    return {
        "workers": [w.snapshot(now) for w in gw.workers.workers(name)],
        "workers_desired": gw.workers.desired(name),
        "failure": wp.failure,
        "blocked": wp.blocked(),
        **(_leader_view(gw) if wp.kubernetes else {}),
    }


def _leader_view(gw: Gateway) -> dict[str, Any]:
    kube = gw.workers.kube if gw.workers is not None else None
    if kube is None:
        return {}
    e = kube.elector
    return {"scaling": {"leader": e.is_leader, "identity": e.identity, "holder": e.holder, "lease": e.name}}
