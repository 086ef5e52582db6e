"""vLLM: `vllm serve` on a loopback port, and what its startup log says about the phases of a cold start.

The log patterns key on message text, not on the `[file.py:line]` tags, which move between releases. They
were read off vLLM 0.26.0 (tests/data/startup_log_*.txt) and the lines older releases print for the same
steps ('Starting to load model', 'Model loading took ... GiB memory').
"""

from __future__ import annotations

import re

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

__all__ = ["ENGINE", "FATAL", "RULES", "command"]


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


# What to do when the GPU's memory is short: the advice every vLLM guide gives, in fleetgate's words.
_MEMORY_ADVICE = (
    "serve a smaller or quantised model, use a larger GPU, or pass a lower --max-model-len or "
    "--gpu-memory-utilization to vLLM (after --)"
)
_NO_GPU = (
    "vLLM found no usable NVIDIA GPU ({0}): run it on a machine with one, or serve on the CPU with "
    "--engine embedded"
)

# vLLM's own messages for failures a restart would repeat (vLLM 0.8-0.26 wording; the cause comes before
# the "Engine core initialization failed" that ends the traceback, and the first match is kept).
FATAL = (
    Diagnosis(
        re.compile(
            r"Free memory on device (?:\S+ )?\(?([\d.]+/[\d.]+ GiB)\)? on startup is less than desired "
            r"GPU memory utilization \(([\d.]+), ([\d.]+ GiB)\)"
        ),
        "not enough free GPU memory at start: {0} free, vLLM wants {2} (--gpu-memory-utilization {1}); "
        "stop what else uses the GPU or " + _MEMORY_ADVICE,
    ),
    Diagnosis(
        re.compile(
            r"max seq len \((\d+)\).*?KV cache is needed, which is larger than the available KV cache "
            r"memory \(([\d.]+ GiB)\)(?:.*?estimated maximum model length is (\d+))?"
        ),
        "the KV cache for a {0}-token context does not fit in the GPU memory left after the weights "
        "({1} available; vLLM's estimate of the longest context that fits: {2}): " + _MEMORY_ADVICE,
    ),
    Diagnosis(
        re.compile(
            r"max seq len \((\d+)\) is larger than the maximum number of tokens that can be stored in KV "
            r"cache \((\d+)\)"
        ),
        "the KV cache holds {1} tokens, less than a {0}-token context: " + _MEMORY_ADVICE,
    ),
    Diagnosis(
        re.compile(r"No available memory for the cache blocks"),
        "no GPU memory is left for the KV cache after loading the weights: " + _MEMORY_ADVICE,
    ),
    Diagnosis(
        re.compile(r"(?:torch\.)?(?:cuda\.)?OutOfMemoryError|CUDA out of memory"),
        "the GPU ran out of memory while vLLM started: " + _MEMORY_ADVICE,
    ),
    Diagnosis(
        re.compile(
            r"(Failed to infer device type|No CUDA GPUs are available|Found no NVIDIA driver on your system"
            r"|CUDA driver initialization failed|NVIDIA driver on your system is too old)"
        ),
        _NO_GPU,
    ),
    Diagnosis(
        re.compile(r"vllm(?: serve)?: error: (.+)"),
        "vLLM rejected its command line: {0} (engine flags go after --; see `vllm serve --help`)",
    ),
    Diagnosis(
        re.compile(r"No module named '?(vllm[\w.]*)'?"),
        "vLLM is not installed properly (no module {0}): pip install vllm, on a machine with an NVIDIA GPU",
    ),
    Diagnosis(
        re.compile(
            r"(GatedRepoError|Access to model \S+ is restricted|401 Client Error|Invalid user token|"
            r"Cannot access gated repo)"
        ),
        "the Hugging Face hub refused the model ({0}): it is gated or private; accept its licence on the "
        "hub and set HF_TOKEN (or workers.hf_token_env in a fleet file)",
    ),
    Diagnosis(
        re.compile(
            r"(is not a local folder and is not a valid model identifier|Repository Not Found"
            r"|couldn't connect to 'https://huggingface\.co'"
            r"|Cannot find the requested files in the local cache"
            r"|outgoing traffic has been disabled|We couldn't connect to)"
        ),
        "the model cannot be found ({0}): give a model directory, check the hub id, or go online "
        "(HF_HUB_OFFLINE=1 allows only models already downloaded)",
    ),
)

ENGINE = Engine(
    name="vllm",
    command=command,
    rules=RULES,
    sleeps=True,
    fatal=FATAL,
    missing=(
        "install vLLM (pip install vllm) on a machine with an NVIDIA GPU, or serve on the CPU with "
        "--engine embedded, or try a simulated vLLM with --engine sim"
    ),
)
