"""The simulator as a worker engine: `fleetgate sim`, where the model is a simulator profile name.

It prints vLLM's own startup log, so vLLM's parser reads it, and honours vLLM's sleep flag and gate.
"""

from __future__ import annotations

import re
import sys

from fleetgate.engines import vllm
from fleetgate.engines.base import Diagnosis, Engine, Launch, LaunchArgs, make_launch, serve_flags

__all__ = ["ENGINE", "command"]


def command(args: LaunchArgs) -> Launch:
    argv = [sys.executable, "-m", "fleetgate", "sim", "--profile", args.model, *serve_flags(args)]
    return make_launch([*argv, *args.engine_args], args)


# `fleetgate sim` says "error: ..." for a bad profile or value, click "Error: ..." for an unknown flag.
FATAL = (
    Diagnosis(
        re.compile(r"^(?:error|Error): (.+)"),
        "the simulator cannot start: {0} (see fleetgate sim --help)",
    ),
)

ENGINE = Engine(name="sim", command=command, rules=vllm.RULES, sleeps=True, fatal=FATAL)
