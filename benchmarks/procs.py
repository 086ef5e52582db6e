"""Process helpers the benchmark scripts share: free ports, CPU time from /proc, waiting for a server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children."""
    total = cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(tree_cpu(int(c)) for c in children)


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 60, every: float = 0.1) -> None:
    """Poll `url` until it answers 200; give up if the process exits or the time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=max(1.0, every)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(every)
    raise SystemExit(f"{url} did not come up within {seconds:g} s")


def start_sim(port: int, *flags: str, model: str = "sim", seconds: float = 30) -> subprocess.Popen[bytes]:
    """`fleetgate sim` on `port` (no startup delay), ready to serve `model`."""
    cmd = [sys.executable, "-m", "fleetgate", "sim", "--port", str(port), "--startup-time", "0",
           "--served-model-name", model, *flags]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, seconds, every=0.05)
    except SystemExit:
        proc.kill()
        raise
    return proc
