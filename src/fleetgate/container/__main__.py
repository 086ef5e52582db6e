"""The images' entrypoint: `python -m fleetgate.container [ARGS]` (docs/deploy.md lists ARGS and the env).

Prints the command it runs (secrets masked), then runs it under the tiny init. `--dry-run` prints the
command and exits: what a recipe's settings turn into, without starting anything.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fleetgate.container.init import supervise
from fleetgate.container.plan import Plan, PlanError, plan
from fleetgate.container.probe import ports

_PREFIX = "fleetgate-container:"


def _executable() -> str:
    """The fleetgate script beside this interpreter (the image's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "fleetgate"
    if beside.is_file():
        return str(beside)
    return shutil.which("fleetgate") or "fleetgate"


def _write_fleet_file(p: Plan) -> None:
    if p.fleet_file is None:
        return
    path, text = p.fleet_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = bool(args) and args[0] == "--dry-run"
    if dry_run:
        args = args[1:]
    runtime = Path(os.environ.get("FLEETGATE_RUNTIME_DIR") or tempfile.gettempdir()) / "fleetgate"
    try:
        p = plan(args, os.environ, runtime_dir=runtime)
    except PlanError as e:
        print(f"{_PREFIX} error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"{_PREFIX} {p.describe()}", file=sys.stderr, flush=True)
    if dry_run:
        if p.fleet_file is not None:
            print(p.fleet_file[1], file=sys.stderr, flush=True)
        return 0
    _write_fleet_file(p)
    ping = None
    if p.health_port is not None:
        from fleetgate.container.ping import PingServer

        public, admin = ports(os.environ)
        ping = PingServer(
            p.health_port, int(p.flag("--port") or public), int(p.flag("--admin-port") or admin)
        )
        ping.start()
    try:
        return supervise([_executable(), *p.argv[1:]], p.environ(os.environ))
    finally:
        if ping is not None:
            ping.stop()


if __name__ == "__main__":
    sys.exit(main())
