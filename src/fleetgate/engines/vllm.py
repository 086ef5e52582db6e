"""vLLM: `vllm serve` on a loopback port, and what its startup log says about the phases of a cold start.

The log patterns key on message text, not on the `[file.py:line]` tags, which move between releases. They
were read off vLLM 0.26.0 (tests/data/startup_log_*.txt) and the lines older releases print for the same
steps ('Starting to load model', 'Model loading took ... GiB memory').
"""

from __future__ import annotations

import re

from fleetgate.engines.base import Engine, Launch, LaunchArgs, LineRule, Phase, make_launch, serve_flags

__all__ = ["ENGINE", "RULES", "command"]


def command(args: LaunchArgs) -> Launch:
    argv = ["vllm", "serve", args.model, *serve_flags(args), *args.engine_args]
    return make_launch(argv, args)


RULES = (
    LineRule(re.compile(r"Loading \w+ checkpoint shards:\s*(?P<pct>\d{1,3})% Completed"), Phase.LOAD),
    # vLLM prints no download bar (it hides the hub's), only the time spent once done, and only past 0.5 s.
    LineRule(
        re.compile(r"Time spent downloading weights for .*: (?P<seconds>\d+(?:\.\d+)?) seconds"),
        Phase.DOWNLOAD,
        then=Phase.LOAD,
    ),
    # Loading begins; downloading, when the weights are not cached yet, happens inside this step.
    LineRule(
        re.compile(r"Loading model from scratch|Starting to load model|Using model weights format"),
        Phase.LOAD,
    ),
    # Past this line the engine compiles (unless eager), profiles, sizes the KV cache and warms up.
    LineRule(re.compile(r"Model loading took "), Phase.COMPILE),
    LineRule(re.compile(r"Capturing CUDA graphs?[^:]*:\s*(?P<pct>\d{1,3})%"), Phase.COMPILE),
    LineRule(re.compile(r"Starting vLLM (?:API )?server|Application startup complete"), Phase.READY),
)


ENGINE = Engine(name="vllm", command=command, rules=RULES, sleeps=True)
