"""Phase lines a supervisor can parse: `INFO MM-DD HH:MM:SS [fleetgate.embedded] phase=NAME key=value ...`.

Phases, in order: `load` (the plan: model, device, dtype, sizes), `loaded` (weights in memory),
`kv_cache` (blocks reserved), `ready` (answering at `url`), `stopped`; or `error` (with `message`) and exit
status 2. Values with spaces or quotes are JSON strings.
"""

from __future__ import annotations

import json
import sys
import time


def _value(v: object) -> str:
    text = str(v)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


def phase(name: str, **fields: object) -> None:
    level = "ERROR" if name == "error" else "INFO"
    stamp = time.strftime("%m-%d %H:%M:%S")
    pairs = "".join(f" {k}={_value(v)}" for k, v in fields.items())
    print(f"{level} {stamp} [fleetgate.embedded] phase={name}{pairs}", file=sys.stdout, flush=True)
