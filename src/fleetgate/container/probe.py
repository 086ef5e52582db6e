"""Is the gateway in this container serving, and does it have a worker? Standard library only (it runs in
the init process and in Docker's HEALTHCHECK, both of which must stay small and fast)."""

from __future__ import annotations

import enum
import http.client
import json
from collections.abc import Mapping

__all__ = ["State", "gateway_state", "get", "ports"]


class State(enum.Enum):
    READY = "ready"  # a worker (or upstream) takes requests now
    STARTING = "starting"  # the gateway answers; requests are held until a worker is ready
    DOWN = "down"  # not answering, or draining (SIGTERM came)


def ports(env: Mapping[str, str]) -> tuple[int, int]:
    """The gateway's public and admin ports as the entrypoint set them (fleetgate's defaults otherwise)."""
    public = env.get("PORT", "").strip() or "8000"
    admin = env.get("FLEETGATE_ADMIN_PORT", "").strip() or "8001"
    return int(public), int(admin)


def get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    """GET http://127.0.0.1:port/path; (status, body), or (0, b"") when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def gateway_state(public: int, admin: int, timeout: float = 2.0) -> State:
    """READY when /ready passes and the admin view shows an endpoint whose breaker is closed; STARTING when
    /ready passes without one (a cold start in progress: fleetgate holds requests meanwhile)."""
    status, _ = get(public, "/ready", timeout)
    if status != 200:
        return State.DOWN
    status, body = get(admin, "/admin/fleet", timeout)
    if status != 200:
        return State.STARTING
    try:
        fleet = json.loads(body)
        endpoints = [e for pool in fleet["pools"].values() for e in pool["endpoints"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return State.STARTING
    return State.READY if any(e.get("state") == "closed" for e in endpoints) else State.STARTING
