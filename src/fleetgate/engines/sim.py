"""The simulator as a worker engine: `fleetgate sim`, where the model is a simulator profile name.

It prints vLLM's own startup log, so vLLM's parser reads it, and honours vLLM's sleep flag and gate.
"""

from __future__ import annotations

import sys

from fleetgate.engines import vllm
from fleetgate.engines.base import Engine, Launch, LaunchArgs, make_launch, serve_flags

__all__ = ["ENGINE", "command"]


def command(args: LaunchArgs) -> Launch:
    argv = [sys.executable, "-m", "fleetgate", "sim", "--profile", args.model, *serve_flags(args)]
    return make_launch([*argv, *args.engine_args], args)


ENGINE = Engine(name="sim", command=command, rules=vllm.RULES, sleeps=True)
