"""Fixtures that run real simulator processes on ephemeral ports."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

DATA = Path(__file__).parent / "data"


def alive(pid: int) -> bool:
    """Running, not a zombie and not gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def until(cond: Callable[[], bool], what: str = "condition", within: float = 10.0) -> None:
    """Poll a condition another process makes true, with a deadline (never a bare sleep)."""
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_consecutive_ports(n: int) -> int:
    """The first of n consecutive free ports, below the kernel's ephemeral range (32768+), where outgoing
    connections cannot take the later ones between this check and the server's bind."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 32000 - n)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports")


@dataclass
class SimProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    """Poll /health until the server answers; fail with its log if it dies or never comes up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"simulator did not become ready:\n{log.read_text()[-3000:]}")


SimFactory = Callable[..., SimProcess]
# vLLM's gates: a test opts in to them explicitly, never through the developer's environment.
_GATES = ("VLLM_SERVER_DEV_MODE", "VLLM_ALLOW_RUNTIME_LORA_UPDATING")


def spawn_sim(
    log_dir: Path, *flags: str, env: Mapping[str, str] | None = None, port: int | None = None
) -> SimProcess:
    """Start `fleetgate sim` (no startup delay) and wait until it answers /health."""
    port = port or free_port()
    log = log_dir / f"sim-{port}.log"
    base = {k: v for k, v in os.environ.items() if k not in _GATES}
    cmd = [sys.executable, "-m", "fleetgate", "sim", "--port", str(port), "--startup-time", "0", *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**base, **(env or {})})
    sim = SimProcess(proc, port, log)
    try:
        wait_ready(sim.url, proc, log)
    except BaseException:
        sim.stop()
        raise
    return sim


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[SimFactory]:
    """Start simulators with extra flags; every process is stopped at teardown."""
    started: list[SimProcess] = []

    def start(*flags: str, env: Mapping[str, str] | None = None, port: int | None = None) -> SimProcess:
        sim = spawn_sim(tmp_path, *flags, env=env, port=port)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start `fleetgate gateway` from a fleet file (text; {port} and {admin_port} are filled in) or upstream
    URLs; waits until it answers /health. Every process is stopped at teardown."""
    started: list[GatewayProcess] = []

    def start(
        config: str | None = None, upstreams: list[str] | None = None, ready: bool = True
    ) -> GatewayProcess:
        port, admin_port = free_port(), free_port()
        log = tmp_path / f"gateway-{port}.log"
        cmd = [sys.executable, "-m", "fleetgate", "gateway"]
        if config is not None:
            path = tmp_path / f"fleet-{port}.yaml"
            path.write_text(config.replace("{port}", str(port)).replace("{admin_port}", str(admin_port)))
            cmd += ["--config", str(path), "--port", str(port), "--admin-port", str(admin_port)]
        for u in upstreams or []:
            cmd += ["--upstream", u]
        if upstreams:
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin_port)]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        gw = GatewayProcess(proc, port, admin_port, log)
        started.append(gw)
        wait_ready(gw.url, proc, log)
        if ready:
            deadline = time.monotonic() + 20
            while httpx.get(f"{gw.url}/ready").status_code != 200:
                assert time.monotonic() < deadline, f"gateway never ready:\n{log.read_text()[-2000:]}"
                time.sleep(0.05)
        return gw

    yield start
    for gw in started:
        gw.stop()
