"""The embedded engine (fleetgate's own transformers-based server) as a worker: its command line and log.

The server itself lives in `fleetgate.engines.embedded`; this module only knows how to start it. Its log is
read through its own `phase=NAME` lines (download, load, loaded, kv_cache, ready) and the bars the Hugging
Face hub client prints while a model downloads. The model `demo` is the built-in demo model (`--demo`).
It compiles nothing: after the weights come the KV cache and the server's start, the `warmup` phase.
"""

from __future__ import annotations

import re
import sys

from fleetgate.engines.base import (
    Diagnosis,
    Engine,
    Launch,
    LaunchArgs,
    LineRule,
    Phase,
    make_launch,
    serve_flags,
)

__all__ = ["DEMO", "ENGINE", "FATAL", "RULES", "command"]

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
    LineRule(re.compile(_PHASE_LINE + r"download\b"), Phase.DOWNLOAD),
    LineRule(re.compile(_PHASE_LINE + r"load\b"), Phase.LOAD),
    # After the weights: the KV cache is reserved and the server warms up and binds its port.
    LineRule(re.compile(_PHASE_LINE + r"(loaded|kv_cache)\b"), Phase.WARMUP),
    LineRule(re.compile(_PHASE_LINE + r"ready\b"), Phase.READY),
    LineRule(re.compile(r"Fetching \d+ files:\s*(?P<pct>\d{1,3})%"), Phase.DOWNLOAD),
    # The hub client's bar for one file's bytes: 'model.safetensors:  45%|####5     | 445M/988M'.
    LineRule(
        re.compile(r"^\s*[\w.\-]+\.(?:safetensors|bin|json|model|txt):\s*(?P<pct>\d{1,3})%\|"), Phase.DOWNLOAD
    ),
    LineRule(re.compile(r"Loading checkpoint shards:\s*(?P<pct>\d{1,3})%"), Phase.LOAD),
)

# Failures a restart would repeat. Every `phase=error` is one (the model cannot be found or read), except
# a port it could not bind: the provider picked that port, and the next start picks another.
FATAL = (
    Diagnosis(
        re.compile(_PHASE_LINE + r"error message=(?!\"cannot serve on)(\"(?:[^\"\\]|\\.)*\"|\S+)"), "{0}"
    ),
    Diagnosis(
        re.compile(
            r"No module named '?(torch|transformers|tokenizers|safetensors|huggingface_hub|llguidance)\b"
        ),
        "the embedded engine needs the [embedded] extra (no module {0}): pip install 'fleetgate[embedded]'",
    ),
    Diagnosis(
        re.compile(r"fleetgate\.engines\.embedded: error: (.+)"),
        "the embedded engine rejected its command line: {0} "
        "(see python -m fleetgate.engines.embedded --help)",
    ),
    Diagnosis(
        re.compile(
            r"(Torch not compiled with CUDA enabled|No CUDA GPUs are available|Found no NVIDIA driver)"
        ),
        "the embedded engine was given a GPU but PyTorch sees none ({0}): leave out --gpus to serve on the "
        "CPU, or install a CUDA build of torch",
    ),
)

# Sleep mode is vLLM's; the embedded server has no /sleep to call.
ENGINE = Engine(name="embedded", command=command, rules=RULES, sleeps=False, fatal=FATAL)
