"""Docker's HEALTHCHECK: `python -m fleetgate.container.healthcheck [--worker]`; exit 0 healthy, 1 not.

Healthy = the gateway answers /ready (a cold start counts: requests are held while the worker loads). With
`--worker`, only once a worker takes requests (for a check that gates traffic on the model being loaded).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from fleetgate.container.probe import State, gateway_state, get, ports


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    public, admin = ports(os.environ)
    if args == ["--worker"]:
        state = gateway_state(public, admin)
        print(state.value)
        return 0 if state is State.READY else 1
    if args:
        print("usage: python -m fleetgate.container.healthcheck [--worker]", file=sys.stderr)
        return 2
    status, _ = get(public, "/ready", timeout=3.0)
    print("ready" if status == 200 else f"not ready ({status or 'no answer'})")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
