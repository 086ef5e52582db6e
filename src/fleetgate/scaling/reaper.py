"""`python -m fleetgate.scaling.reaper`: ends the workers of a supervisor that died without stopping them.

Workers run in their own sessions (a Ctrl-C in the terminal must reach only fleetgate), so nothing ends them
when fleetgate is killed (SIGKILL, an OOM kill, the end of a container's grace period): a vLLM worker would
keep its GPU and its port. The local provider starts one reaper and tells it, one line each on its stdin,
`+PGID` for each worker's process group and `-PGID` once that worker is gone. Only the provider holds the
pipe's write end, so the reaper reads end-of-file exactly when the provider's process ends, however it
ends; it then sends SIGTERM to every group it still knows, and SIGKILL to those left after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable

# A worker told to stop by its reaper has this long before it is killed (vLLM frees its shared memory).
GRACE = 3.0
_POLL = 0.05


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(groups: Iterable[int], sig: signal.Signals) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def end_groups(groups: set[int], grace: float = GRACE) -> None:
    """SIGTERM each group, then SIGKILL what is left after `grace` seconds."""
    _signal(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := {g for g in groups if _alive(g)}) and time.monotonic() < deadline:
        time.sleep(_POLL)
    _signal(left, signal.SIGKILL)


def main() -> int:
    # The terminal's Ctrl-C is the supervisor's to handle; the reaper acts only when the supervisor is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if len(line) > 1 and line[1:].isdigit() and line[0] in "+-":
            pgid = int(line[1:])
            if line[0] == "+":
                groups.add(pgid)
            else:
                groups.discard(pgid)
    end_groups(groups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
