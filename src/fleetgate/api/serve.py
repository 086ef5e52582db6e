"""Running the gateway: public and admin servers in one event loop, and DESIGN's SIGTERM sequence.

On SIGTERM `/ready` fails at once (load balancers stop sending) while requests are still served for the
pre-stop delay (those already routed here keep arriving); then the public listener closes, requests still
arriving on open connections get 503, and in-flight streams drain up to `drain_timeout`. What is still
running then ends with an SSE error event and `[DONE]` (an error answer if nothing was sent yet). The admin
port (/metrics, /admin/fleet) stays up until the end. Ctrl-C skips the pre-stop delay; a second Ctrl-C
stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable, Generator
from typing import Any, Literal

import uvicorn

from fleetgate.api.app import create_app
from fleetgate.api.gateway import Gateway
from fleetgate.api.http import ConnectionLimits, default_max_connections, guarded_protocol, raise_fd_limit
from fleetgate.api.logs import configure as configure_logs
from fleetgate.config import FleetConfig

log = logging.getLogger("fleetgate.gateway")


class PortInUseError(OSError):
    """An address the gateway must listen on is taken; the message says which flag moves it."""


class WorkersFailedError(RuntimeError):
    """A pool of started workers failed (`exit_on_failure`): the message says why and what to do."""


# How often `exit_on_failure` looks at the pools (a failure is rare; nothing waits on this).
_FAILURE_POLL = 0.2


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway runs the shutdown sequence itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int, flag: str) -> socket.socket:
    """A listening socket, or PortInUseError naming the flag that moves it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"{host}:{port} is already in use (another fleetgate, or a vLLM on its default port?): "
                f"choose another with {flag}"
            ) from None
        raise PortInUseError(f"cannot listen on {host}:{port}: {e.strerror} ({flag})") from None
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(
    app: Any, lifespan: Literal["on", "off"], http: Any, idle_timeout: float
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan=lifespan,
        # The gateway drains its own requests first (Gateway.drain); this only bounds what is left after.
        timeout_graceful_shutdown=5,
        timeout_keep_alive=max(1, round(idle_timeout)),
        http=http,
        loop="none",
        access_log=False,
        log_level="warning",
    )


async def serve(
    config: FleetConfig,
    progress: bool = False,
    announce: Callable[[], None] = lambda: None,
    exit_on_failure: bool = False,
) -> None:
    """Serve until stopped; `progress` draws the workers' cold starts as bars (for a terminal); `announce`
    runs once both addresses are bound. Raises PortInUseError before starting anything when one is taken;
    with `exit_on_failure`, stops and raises WorkersFailedError once a pool of workers has failed."""
    public_sock = bind(config.listen.host, config.listen.port, "--port")
    try:
        admin_sock = bind(config.admin.host, config.admin.port, "--admin-port")
    except PortInUseError:
        public_sock.close()
        raise
    announce()
    configure_logs(config.log)
    fd_limit = raise_fd_limit()
    public, admin = create_app(config)
    gw = public.gw
    lc = config.listen
    limits = ConnectionLimits(
        max_connections=lc.max_connections or default_max_connections(fd_limit),
        max_header_bytes=lc.max_header_bytes,
        header_timeout=lc.header_timeout,
        body_timeout=lc.body_timeout,
        refused=lambda reason: gw.metrics.rejected.labels(reason).inc(),
    )
    bars: asyncio.Task[None] | None = None
    if progress and gw.workers is not None:
        from rich.console import Console

        from fleetgate.api.progress import show_startups

        bars = asyncio.create_task(show_startups(gw.workers, Console()))
    main = _Server(_uvicorn_config(public, "on", guarded_protocol(limits), lc.idle_timeout))
    side = _Server(_uvicorn_config(admin, "off", "httptools", lc.idle_timeout))
    shutdown = _Shutdown(gw, config, main, side)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, shutdown.on_term)
    loop.add_signal_handler(signal.SIGINT, shutdown.on_int)
    watch: asyncio.Task[str] | None = None
    if exit_on_failure and gw.workers is not None:
        watch = asyncio.create_task(_first_failure(gw))

        def stop_serving(task: asyncio.Task[str]) -> None:
            if not task.cancelled():
                shutdown.on_int()

        watch.add_done_callback(stop_serving)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    try:
        await asyncio.gather(main.serve(sockets=[public_sock]), side.serve(sockets=[admin_sock]))
        if watch is not None and watch.done() and not watch.cancelled():
            raise WorkersFailedError(watch.result())
    finally:
        if watch is not None:
            watch.cancel()
        if bars is not None:
            bars.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bars
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)
        await shutdown.cancel()


async def _first_failure(gw: Gateway) -> str:
    """Why the first pool of workers that fails failed (the provider said it in the log already)."""
    assert gw.workers is not None
    while True:
        for name, pool in gw.workers.pools.items():
            if pool.failure is not None:
                return pool.failure if len(gw.workers.pools) == 1 else f"pool {name}: {pool.failure}"
        await asyncio.sleep(_FAILURE_POLL)


class _Shutdown:
    """The SIGTERM / Ctrl-C sequence: not ready, serve through the pre-stop delay, close, drain, exit."""

    def __init__(self, gw: Gateway, config: FleetConfig, main: _Server, side: _Server) -> None:
        self.gw = gw
        self.pre_stop = config.shutdown.pre_stop_delay
        self.drain = config.shutdown.drain_timeout
        self.main = main
        self.side = side
        self.interrupts = 0
        self.task: asyncio.Task[None] | None = None

    def on_term(self) -> None:
        if self.task is None:
            log.info("SIGTERM: not ready; serving for %.1f s more, then draining up to %.1f s",
                     self.pre_stop, self.drain)  # fmt: skip
            self.task = asyncio.create_task(self._run(self.pre_stop))

    def on_int(self) -> None:
        self.interrupts += 1
        if self.interrupts > 1:
            self.main.force_exit = self.side.force_exit = True
            self.main.should_exit = self.side.should_exit = True
        elif self.task is None:
            self.task = asyncio.create_task(self._run(0.0))

    async def _run(self, pre_stop: float) -> None:
        gw = self.gw
        gw.draining = True  # /ready fails; requests are still served
        await asyncio.sleep(pre_stop)
        gw.closing = True  # new requests are refused from here
        for server in self.main.servers:
            server.close()  # stop accepting; open connections stay for their requests
        if gw.exchanges:
            log.info("draining %d request(s), up to %.1f s", len(gw.exchanges), self.drain)
        await gw.drain(time.monotonic() + self.drain)
        # The admin port answered /metrics through the drain; both go now.
        self.main.should_exit = self.side.should_exit = True

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def run(
    config: FleetConfig,
    progress: bool = False,
    announce: Callable[[], None] = lambda: None,
    exit_on_failure: bool = False,
) -> None:
    import uvloop

    uvloop.run(serve(config, progress, announce, exit_on_failure))
