"""Running the gateway: public and admin servers in one event loop, and DESIGN's SIGTERM sequence.

On SIGTERM `/ready` fails at once (load balancers stop sending), serving goes on for the pre-stop delay
(requests already routed here still arrive), then the listeners close and in-flight streams drain up to the
deadline. Ctrl-C skips the pre-stop delay; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Generator
from typing import Any, Literal

import uvicorn

from fleetgate.api.app import create_app
from fleetgate.api.logs import configure as configure_logs
from fleetgate.config import FleetConfig

log = logging.getLogger("fleetgate.gateway")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway runs the shutdown sequence itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _uvicorn_config(
    app: Any, host: str, port: int, lifespan: Literal["on", "off"], drain: float
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan=lifespan,
        timeout_graceful_shutdown=int(drain),
        http="httptools",
        loop="none",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


async def serve(config: FleetConfig, progress: bool = False) -> None:
    """Serve until stopped; `progress` draws the workers' cold starts as bars (for a terminal)."""
    configure_logs(config.log)
    public, admin = create_app(config)
    gw = public.gw
    bars: asyncio.Task[None] | None = None
    if progress and gw.workers is not None:
        from rich.console import Console

        from fleetgate.api.progress import show_startups

        bars = asyncio.create_task(show_startups(gw.workers, Console()))
    drain = config.shutdown.drain_timeout
    main = _Server(
        _uvicorn_config(public, config.listen.host, config.listen.port, lifespan="on", drain=drain)
    )
    side = _Server(_uvicorn_config(admin, config.admin.host, config.admin.port, lifespan="off", drain=drain))
    loop = asyncio.get_running_loop()
    interrupts = 0

    def stop_now() -> None:
        main.should_exit = side.should_exit = True

    def on_term() -> None:
        if gw.draining:
            return
        gw.draining = True
        log.info("SIGTERM: not ready; serving for %.1f s more, then draining up to %.1f s",
                 config.shutdown.pre_stop_delay, drain)  # fmt: skip
        loop.call_later(config.shutdown.pre_stop_delay, stop_now)

    def on_int() -> None:
        nonlocal interrupts
        interrupts += 1
        gw.draining = True
        if interrupts > 1:
            main.force_exit = side.force_exit = True
        stop_now()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_int)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    try:
        await asyncio.gather(main.serve(), side.serve())
    finally:
        if bars is not None:
            bars.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bars
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)


def run(config: FleetConfig, progress: bool = False) -> None:
    import uvloop

    uvloop.run(serve(config, progress))
