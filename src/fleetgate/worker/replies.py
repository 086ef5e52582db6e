"""Small response helpers shared by the simulator's routes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
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


async def unless_gone(request: Request, work: Awaitable[Response]) -> Response:
    """The response `work` makes, or 499 if the client disconnects first (`work` is then cancelled)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        return Response(status_code=499)
    finally:
        gone.cancel()
