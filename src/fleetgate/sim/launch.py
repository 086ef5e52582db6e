"""Starting simulated servers: the vLLM startup sequence, one replica per process, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import uvicorn

from fleetgate.sim.server import VERSION, SimServer
from fleetgate.sim.settings import SimSettings
from fleetgate.sim.startup_log import RECORDED_ROUTES, StartupPlan, startup_lines


def startup_plan(s: SimSettings, startup_seconds: float, non_default_args: dict[str, object]) -> StartupPlan:
    p = s.profile
    eager = s.engine.enforce_eager
    total = p.startup.total(eager)
    # An override shortens every phase in proportion, so the log keeps its shape.
    k = startup_seconds / total if total else 0.0
    return StartupPlan(
        version=VERSION,
        model=s.model_path,
        served_model_names=s.served_model_names,
        host=s.host,
        port=s.port,
        architecture=p.architecture,
        max_model_len=s.engine.max_model_len,
        max_num_batched_tokens=s.engine.max_num_batched_tokens,
        kv_cache_tokens=s.engine.num_gpu_blocks * s.engine.block_size,
        weights_gib=p.weights_gib,
        enforce_eager=eager,
        non_default_args=non_default_args,
        load_seconds=p.startup.load * k,
        compile_seconds=0.0 if eager else p.startup.compile * k,
        graph_seconds=0.0 if eager else p.startup.graph * k,
        other_seconds=p.startup.other * k,
        routes=list(RECORDED_ROUTES),
    )


async def _print_startup(plan: StartupPlan, time_scale: float) -> None:
    start = time.monotonic()
    pid = os.getpid()
    for offset, line in startup_lines(plan, pid, pid + 1, time.time):
        delay = start + offset / time_scale - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        print(line, flush=True)


async def serve_one(s: SimSettings, startup_seconds: float, non_default_args: dict[str, object]) -> None:
    """Print vLLM's startup log over the (scaled) startup time, then listen; as vLLM, not before."""
    await _print_startup(startup_plan(s, startup_seconds, non_default_args), s.engine.time_scale)
    server = SimServer(s)
    # Thousands of live streams make full collections slow; a pause in the engine loop is a latency spike
    # no real GPU has. Startup state is permanent, young garbage is collected often and cheaply.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    config = uvicorn.Config(
        server.app(),
        host=s.host,
        port=s.port,
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
        backlog=4096,
    )
    sockets = None
    if s.reuse_port:
        # Several processes on one port, the kernel spreading connections: a simulated fleet behind one
        # address, for load-testing a client harder than one process could answer.
        sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((s.host, s.port))
        sockets = [sock]
    await uvicorn.Server(config).serve(sockets=sockets)


def run_one(s: SimSettings, startup_seconds: float, non_default_args: dict[str, object]) -> None:
    import uvloop

    # A shell starts background jobs with SIGINT ignored; Ctrl-C must still stop us, even while starting.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    # uvicorn re-raises the SIGINT it handled once it has shut down; for us that is a clean exit.
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve_one(s, startup_seconds, non_default_args))


def supervise(argv_for: Sequence[list[str]]) -> int:
    """Run one child process per replica; forward SIGINT/SIGTERM; exit when all have exited. A replica that
    fails (a port in use, a bad flag) stops the others: a fleet missing a replica must not look healthy."""
    children = {
        c.pid: c for c in (subprocess.Popen([sys.executable, "-m", "fleetgate", *argv]) for argv in argv_for)
    }
    stopping = False

    def stop_all(signum: int) -> None:
        nonlocal stopping
        stopping = True
        for c in children.values():
            if c.returncode is None:
                c.send_signal(signum)

    signal.signal(signal.SIGINT, lambda signum, _frame: stop_all(signum))
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop_all(signum))
    codes: list[int] = []
    while len(codes) < len(children):
        pid, status = os.wait()
        child = children.get(pid)
        if child is None:
            continue
        child.returncode = code = os.waitstatus_to_exitcode(status)
        codes.append(code)
        # A replica stopped by our own signal exited cleanly from the user's point of view.
        if code not in (0, -signal.SIGINT, -signal.SIGTERM) and not stopping:
            stop_all(signal.SIGTERM)
    return max((0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code) for code in codes)
