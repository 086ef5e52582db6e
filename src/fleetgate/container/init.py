"""A tiny init: run one command, pass it the signals the platform sends, reap orphans, exit with its status.

PID 1 in a container gets no default signal actions and inherits every orphaned process: without an init,
a `docker stop` waits out its timeout and exited vLLM engine processes stay zombies. This process stays
small (standard library only) while fleetgate runs as its child; fleetgate's own SIGTERM sequence (not ready,
pre-stop delay, drain, workers stopped) does the rest. Outside PID 1 it asks to be a child subreaper, so the
same code behaves the same in tests on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from types import FrameType

__all__ = ["FORWARDED", "supervise"]

# What platforms and people send: docker stop / Kubernetes / Cloud Run / RunPod (TERM), Ctrl-C (INT).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Orphans of our child are re-parented to us (PID 1 gets them anyway). Linux only; elsewhere a no-op."""
    if os.getpid() == 1 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def supervise(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run argv until it exits, forwarding FORWARDED signals to it; its exit status (128 + signal number
    when a signal ended it, as shells report it)."""
    _become_subreaper()
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child is None:
            pending.append(signum)  # arrived before the child existed: delivered right after it starts
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        try:
            child = subprocess.Popen(list(argv), env=dict(env))
        except OSError as e:
            print(f"fleetgate-container: cannot run {argv[0]}: {e.strerror}", file=sys.stderr, flush=True)
            return 127 if e.errno == errno.ENOENT else 126
        for signum in pending:
            os.kill(child.pid, signum)
        code = _wait(child.pid)
        child.returncode = code  # reaped by os.wait: Popen must not wait for it again
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait(main_pid: int) -> int:
    """Reap every child until the main one exits; then reap what is already dead and return its status."""
    while True:
        try:
            pid, status = os.wait()  # signals interrupt it; PEP 475 retries after the handler ran
        except ChildProcessError:
            return 0  # nothing left to wait for (the main child was reaped elsewhere)
        if pid != main_pid:
            continue  # an orphan re-parented to us: reaped, nothing else to do
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        return 128 - code if code < 0 else code
