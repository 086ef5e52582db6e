"""An oracle router for benchmarks: it asks every simulator for its true cache and queue state
(`POST /_sim/match`, an admin endpoint only `fleetgate sim` has) and sends each request where the predicted
time to first token is least. No real router can know this much; it bounds what routing can achieve.

    python benchmarks/oracle_router.py --port 9000 http://127.0.0.1:8101 http://127.0.0.1:8102 ...

Predicted TTFT, in prefill tokens: the tokens queued ahead (`waiting_tokens`) plus this prompt's uncached
tokens, plus a charge per running sequence (decode steps interleave with prefill).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp import web

RUNNING_COST_TOKENS = 64


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("upstreams", nargs="+")
    args = ap.parse_args()
    upstreams = [u.rstrip("/") for u in args.upstreams]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def match(url: str, probe: dict[str, Any]) -> float:
        async with session.post(f"{url}/_sim/match", json=probe) as r:
            m = await r.json(loads=orjson.loads)
        uncached = m["prompt_tokens"] - m["hit_tokens"]
        return float(m["waiting_tokens"] + uncached + RUNNING_COST_TOKENS * m["running"])

    async def forward(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        probe = {k: body[k] for k in ("messages", "prompt", "tools") if k in body}
        costs = await asyncio.gather(*(match(u, probe) for u in upstreams))
        target = upstreams[min(range(len(upstreams)), key=costs.__getitem__)]
        headers = {"content-type": "application/json"}
        async with session.post(target + request.path, data=raw, headers=headers) as up:
            out = web.StreamResponse(status=up.status, headers={"content-type": up.content_type})
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    async def models(request: web.Request) -> web.Response:
        async with session.get(f"{upstreams[0]}/v1/models") as r:
            return web.Response(body=await r.read(), content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/{tail:.*}", forward)
    app.router.add_post("/tokenize", forward)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
