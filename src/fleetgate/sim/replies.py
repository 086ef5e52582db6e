"""Small response helpers shared by the simulator's routes."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fleetgate.protocol import OpenAIError


def reply_json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def reply_error(e: OpenAIError) -> Response:
    return Response(e.to_json(), status_code=e.status, media_type="application/json")


async def until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
