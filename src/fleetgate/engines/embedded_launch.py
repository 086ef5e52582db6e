"""The embedded engine (fleetgate's own transformers-based server) as a worker: its command line and log.

The server itself lives in `fleetgate.engines.embedded`; this module only knows how to start it. Its log is
read through its own `phase=NAME` lines (load, loaded, kv_cache, ready) and the bars the Hugging Face
libraries print while a hub model downloads. The model `demo` is the built-in demo model (`--demo`).
"""

from __future__ import annotations

import re
import sys

from fleetgate.engines.base import Engine, Launch, LaunchArgs, LineRule, Phase, make_launch, serve_flags

__all__ = ["DEMO", "ENGINE", "RULES", "command"]

# The model name that stands for the demo model, made on first run (its output is meaningless).
DEMO = "demo"


def command(args: LaunchArgs) -> Launch:
    # Without GPUs of its own a worker must not pick up whatever CUDA device the host shows.
    device = "cuda" if args.gpus else "cpu"
    model = ["--demo"] if args.model == DEMO else ["--model", args.model]
    argv = [sys.executable, "-m", "fleetgate.engines.embedded", *model, *serve_flags(args)]
    return make_launch([*argv, "--device", device, *args.engine_args], args)


_PHASE_LINE = r"\[fleetgate\.embedded\] phase="
RULES = (
    LineRule(re.compile(_PHASE_LINE + r"load\b"), Phase.LOAD),
    # After the weights: the KV cache is reserved and the server warms up and binds its port.
    LineRule(re.compile(_PHASE_LINE + r"(loaded|kv_cache)\b"), Phase.COMPILE),
    LineRule(re.compile(_PHASE_LINE + r"ready\b"), Phase.READY),
    LineRule(re.compile(r"Fetching \d+ files:\s*(?P<pct>\d{1,3})%"), Phase.DOWNLOAD),
    LineRule(re.compile(r"Loading checkpoint shards:\s*(?P<pct>\d{1,3})%"), Phase.LOAD),
)


# Sleep mode is vLLM's; the embedded server has no /sleep to call.
ENGINE = Engine(name="embedded", command=command, rules=RULES, sleeps=False)
