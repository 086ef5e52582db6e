"""The embedded engine (fleetgate's own transformers-based server) as a worker: its command line and log.

The server itself lives in `fleetgate.engines.embedded`; this module only knows how to start it. Its log is
read through the bars the Hugging Face libraries print (hub download, checkpoint shards) and uvicorn's
startup line, which is all a transformers-based server shows of its phases.
"""

from __future__ import annotations

import re
import sys

from fleetgate.engines.base import Engine, Launch, LaunchArgs, LineRule, Phase, make_launch, serve_flags

__all__ = ["ENGINE", "RULES", "command"]


def command(args: LaunchArgs) -> Launch:
    # Without GPUs of its own a worker must not pick up whatever CUDA device the host shows.
    device = "cuda" if args.gpus else "cpu"
    argv = [sys.executable, "-m", "fleetgate.engines.embedded", "--model", args.model, *serve_flags(args)]
    return make_launch([*argv, "--device", device, *args.engine_args], args)


RULES = (
    LineRule(re.compile(r"Fetching \d+ files:\s*(?P<pct>\d{1,3})%"), Phase.DOWNLOAD),
    LineRule(re.compile(r"Loading checkpoint shards:\s*(?P<pct>\d{1,3})%"), Phase.LOAD),
    LineRule(re.compile(r"Application startup complete|Uvicorn running on"), Phase.READY),
)


# Sleep mode is vLLM's; the embedded server has no /sleep to call.
ENGINE = Engine(name="embedded", command=command, rules=RULES, sleeps=False)
