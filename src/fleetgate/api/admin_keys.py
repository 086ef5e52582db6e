"""The admin API's tenancy routes (admin port only):

    POST   /admin/keys              issue a key (body: KeyRequest); 201 with the secret, shown this once
    GET    /admin/keys[?tenant=]    the keys, never their secrets
    DELETE /admin/keys/{id}         revoke
    POST   /admin/keys/{id}/rotate  a new secret, the old one stops
    GET    /admin/usage[?since=YYYY-MM-DD&tenant=]   usage per tenant, model and day (as `fleetgate usage`)

Each change bumps the store's version row, so every replica's key cache sees it within a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import orjson
from pydantic import ValidationError

from fleetgate.api.asgi import Receive, Scope, Send, error, read_body, reply
from fleetgate.protocol import (
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OpenAIError,
    ServiceUnavailableError,
)
from fleetgate.tenancy.requests import KeyRequest

if TYPE_CHECKING:
    from fleetgate.tenancy.store import KeyStore

__all__ = ["handles", "serve_tenancy"]

MAX_BODY = 65_536


def handles(path: str) -> bool:
    return path == "/admin/usage" or path == "/admin/keys" or path.startswith("/admin/keys/")


async def serve_tenancy(store: KeyStore | None, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        if store is None:
            raise ServiceUnavailableError("no key store: set tenancy.database in the fleet file")
        await _route(store, scope, receive, send)
    except OpenAIError as e:
        await error(send, e, "admin")


async def _route(store: KeyStore, scope: Scope, receive: Receive, send: Send) -> None:
    path, method = scope["path"], scope["method"]
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    if path == "/admin/usage":
        if method != "GET":
            raise MethodNotAllowedError(method, ["GET"])
        rows = await store.usage_summary(query.get("since"), query.get("tenant"))
        await reply(send, 200, orjson.dumps({"usage": rows}), "admin")
        return
    if path == "/admin/keys":
        if method == "GET":
            keys = await store.list_keys(query.get("tenant"), query.get("all") in ("1", "true"))
            await reply(send, 200, orjson.dumps({"keys": [k.view() for k in keys]}), "admin")
            return
        if method != "POST":
            raise MethodNotAllowedError(method, ["GET", "POST"])
        raw = await read_body(receive, MAX_BODY)
        try:
            request = KeyRequest.model_validate_json(raw)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            message = f"{where}: {first['msg']}" if where else str(first["msg"])
            raise BadRequestError(message, param=where or None) from None
        record, secret = await store.create(
            request.tenant,
            name=request.name,
            priority=request.priority,
            models=request.models,
            pools=request.pools,
            limits=request.limits(),
            expires_at=request.expiry(),
            metadata=request.metadata,
        )
        await reply(send, 201, orjson.dumps({**record.view(), "key": secret}), "admin")
        return
    rest = path[len("/admin/keys/") :]
    key_id, _, action = rest.partition("/")
    if action == "rotate":
        if method != "POST":
            raise MethodNotAllowedError(method, ["POST"])
        done = await store.rotate(key_id)
        if done is None:
            raise NotFoundError(f"no live key {key_id[:64]}")
        await reply(send, 200, orjson.dumps({**done[0].view(), "key": done[1]}), "admin")
        return
    if action:
        raise NotFoundError(f"no route {path[:200]}")
    if method == "GET":
        found = await store.get(key_id)
        if found is None:
            raise NotFoundError(f"no key {key_id[:64]}")
        await reply(send, 200, orjson.dumps(found.view()), "admin")
    elif method == "DELETE":
        if not await store.revoke(key_id):
            raise NotFoundError(f"no live key {key_id[:64]}")
        await reply(send, 200, orjson.dumps({"id": key_id, "revoked": True}), "admin")
    else:
        raise MethodNotAllowedError(method, ["GET", "DELETE"])
