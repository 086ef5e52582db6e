"""vLLM: `vllm serve` on a loopback port, and what its startup log says about the phases of a cold start.

The log patterns key on message text, not on the `[file.py:line]` tags, which move between releases. They
were read off vLLM 0.26.0 (tests/data/startup_log_*.txt) and the lines older releases print for the same
steps ('Starting to load model', 'Model loading took ... GiB memory').
"""

from __future__ import annotations

import re

from fleetgate.engines.base import (
    Engine,
    Launch,
    LaunchArgs,
    LogEvent,
    Phase,
    fraction,
    make_launch,
    serve_flags,
)

__all__ = ["ENGINE", "command", "parse_line"]


def command(args: LaunchArgs) -> Launch:
    argv = ["vllm", "serve", args.model, *serve_flags(args), *args.engine_args]
    return make_launch(argv, args)


# Loading begins; downloading, when the weights are not cached yet, happens inside this step.
_LOAD_START = re.compile(r"Loading model from scratch|Starting to load model|Using model weights format")
# vLLM prints no download bar (it hides the hub's), only the time spent once done, and only past 0.5 s.
_DOWNLOADED = re.compile(r"Time spent downloading weights for .*: (?P<seconds>\d+(?:\.\d+)?) seconds")
_SHARDS = re.compile(r"Loading \w+ checkpoint shards:\s*(?P<pct>\d{1,3})% Completed")
# Past this line the engine compiles (unless eager), profiles, sizes the KV cache and warms up.
_LOADED = re.compile(r"Model loading took ")
_GRAPHS = re.compile(r"Capturing CUDA graphs?[^:]*:\s*(?P<pct>\d{1,3})%")
_LISTENING = re.compile(r"Starting vLLM (?:API )?server|Application startup complete")


def parse_line(line: str) -> list[LogEvent]:
    """The startup phases one line of vLLM's output shows (none for most lines)."""
    if m := _SHARDS.search(line):
        return [LogEvent(Phase.LOAD, progress=fraction(m["pct"]))]
    if m := _DOWNLOADED.search(line):
        return [LogEvent(Phase.DOWNLOAD, ago=float(m["seconds"])), LogEvent(Phase.LOAD)]
    if _LOAD_START.search(line):
        return [LogEvent(Phase.LOAD)]
    if _LOADED.search(line):
        return [LogEvent(Phase.COMPILE)]
    if m := _GRAPHS.search(line):
        return [LogEvent(Phase.COMPILE, progress=fraction(m["pct"]))]
    if _LISTENING.search(line):
        return [LogEvent(Phase.READY)]
    return []


ENGINE = Engine(name="vllm", command=command, parse_line=parse_line, sleeps=True)
