"""A gateway process for a whole test module (the per-test `gateway_factory` starts one per test)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import GatewayProcess, free_port, wait_ready


@contextmanager
def gateway(directory: Path, config: str) -> Iterator[GatewayProcess]:
    """`fleetgate gateway` from a fleet file's text; ready (some endpoint routable) when yielded."""
    port, admin_port = free_port(), free_port()
    path = directory / f"fleet-{port}.yaml"
    path.write_text(config)
    log = directory / f"gateway-{port}.log"
    cmd = [sys.executable, "-m", "fleetgate", "gateway", "--config", str(path), "--port", str(port),
           "--admin-port", str(admin_port)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    gw = GatewayProcess(proc, port, admin_port, log)
    try:
        wait_ready(gw.url, proc, log)
        deadline = time.monotonic() + 20
        while httpx.get(f"{gw.url}/ready").status_code != 200:
            assert time.monotonic() < deadline, f"gateway never ready:\n{log.read_text()[-2000:]}"
            time.sleep(0.05)
        yield gw
    finally:
        gw.stop()
