"""Real Redis and PostgreSQL servers for the tenancy tests: started on free ports in temporary directories
(Debian's redis-server and postgresql packages), stopped at the end of the session.

PostgreSQL refuses to run as root; where the tests run as root (CI containers) it runs as the `postgres`
user the Debian package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (Debian package redis-server)"
    with tempfile.TemporaryDirectory(prefix="fg-redis-") as tmp:
        port = free_port()
        log = Path(tmp) / "redis.log"
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", tmp, "--logfile", str(log)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        log.touch()
        try:
            _wait_port(port, proc, "redis-server", log)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(proc)


def _pg_bin(name: str) -> str:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    found = shutil.which(name)
    assert found, f"{name} is not installed (Debian package postgresql)"
    return found


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    as_root = os.geteuid() == 0
    prefix: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    tmp = tempfile.mkdtemp(prefix="fg-pg-")
    try:
        data, log = Path(tmp) / "data", Path(tmp) / "pg.log"
        if as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            [*prefix, _pg_bin("initdb"), "-D", str(data), "-U", "fleetgate", "--auth=trust", "-N",
             "-E", "UTF8", "--locale=C"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        port = free_port()
        cmd = [*prefix, _pg_bin("postgres"), "-D", str(data), "-p", str(port), "-k", tmp,
               "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
               "-c", "synchronous_commit=off"]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_port(port, proc, "postgres", log)
            # The server accepts connections a moment before it accepts logins: wait for a real one.
            deadline = time.monotonic() + 30
            ready = [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "fleetgate"]
            while subprocess.run(ready, stdout=subprocess.DEVNULL).returncode != 0:
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.05)
            yield f"postgresql://fleetgate@127.0.0.1:{port}/postgres"
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url
