"""Read the load of one vLLM server from its Prometheus `/metrics` page, fast.

The gateway scrapes every endpoint about every 100 ms. A vLLM 0.26 page is ~57 KB (~680 lines, most of them
histogram buckets) and routing needs a dozen samples from it, so this does not parse the page: one compiled
regular expression finds the sample lines of the families used here (its literal prefix ``"\\nvllm:"`` lets
the regex engine skip between candidates), values go through ``float()``, and label sets are parsed only for
the few families whose labels matter. `benchmarks/scrape_parse.py` measures it against prometheus_client's
full parser. It is pure CPU work on bytes: call it from the scrape loop, never on the request path.

Families read (vLLM 0.26 names; ground truth in tests/data and /work/shared/vllm-reference/README.md):

============================================  ==========================================================
``vllm:num_requests_running``                 ``running``, summed over all label sets (engines, models)
``vllm:num_requests_waiting``                 ``waiting``, summed
``vllm:num_requests_waiting_by_reason``       ``waiting_deferred``: samples with ``reason="deferred"``, summed
``vllm:kv_cache_usage_perc``                  ``kv_usage``: the fullest engine (max; NaN if a sample is NaN)
``vllm:gpu_cache_usage_perc``                 fallback for ``kv_usage``, read only when the family above is
                                              absent: older vLLM releases used this name; 0.26 no
                                              longer exports it
``vllm:prefix_cache_queries_total``           ``prefix_queries`` (counter, summed)
``vllm:prefix_cache_hits_total``              ``prefix_hits`` (counter, summed)
``vllm:engine_sleep_state``                   ``awake`` / ``sleep_level`` (see `VLLMLoad`)
``vllm:cache_config_info``                    ``block_size`` / ``num_gpu_blocks`` labels (smallest engine)
``vllm:lora_requests_info``                   ``lora_running`` / ``lora_waiting`` / ``max_lora`` labels of the
                                              label set whose value (a Unix timestamp) is the newest
============================================  ==========================================================

Absent families give 0 / None / empty (and ``awake=True``); `MetricsParseError` is raised only when not one
of running, waiting or KV usage is on the page (an HTML error page, a non-vLLM server, a body cut off before
them).

Text format handled: samples with and without labels; label values with escapes (``\\\\``, ``\\"``,
``\\n``) and with ``{`` ``}`` ``,`` inside the quotes; ``# HELP``/``# TYPE`` lines that mention the names;
``+Inf``/``-Inf``/``NaN`` and scientific notation; an optional trailing timestamp (ignored); LF or CRLF line
endings. Not handled: sample lines indented with whitespace (the exposition format never produces them). A
sample whose value does not parse as a float is skipped as if it were absent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["MetricsParseError", "VLLMLoad", "parse_vllm_metrics"]


class MetricsParseError(ValueError):
    """The page carries none of the families a load reading needs."""


@dataclass(frozen=True, slots=True)
class VLLMLoad:
    """One scrape of one vLLM server, reduced to what routing uses."""

    running: float  # vllm:num_requests_running, summed over engine/model_name label sets
    waiting: float  # vllm:num_requests_waiting, summed
    waiting_deferred: float  # vllm:num_requests_waiting_by_reason{reason="deferred"}, summed (0 if absent)
    # vllm:kv_cache_usage_perc, max over engines; fallback vllm:gpu_cache_usage_perc (0 if both absent)
    kv_usage: float
    prefix_queries: float  # vllm:prefix_cache_queries_total, summed (0 if absent)
    prefix_hits: float  # vllm:prefix_cache_hits_total, summed (0 if absent)
    # False when any engine reports sleep_state="awake" != 1 or a sleep level; True when the family is
    # absent (vLLM without sleep-mode metrics).
    awake: bool
    sleep_level: int  # 0 awake, 1 weights_offloaded == 1, 2 discard_all == 1 (highest over engines)
    block_size: int | None  # vllm:cache_config_info{block_size} (smallest over engines)
    num_gpu_blocks: int | None  # vllm:cache_config_info{num_gpu_blocks}: the smallest engine's KV capacity
    lora_running: tuple[str, ...]  # running_lora_adapters of the newest vllm:lora_requests_info label set
    lora_waiting: tuple[str, ...]  # waiting_lora_adapters of the same label set
    max_lora: int | None  # max_lora of the same label set


_FAMILIES = (
    rb"num_requests_(?:running|waiting(?:_by_reason)?)|kv_cache_usage_perc|gpu_cache_usage_perc"
    rb"|prefix_cache_(?:queries|hits)_total|engine_sleep_state|cache_config_info|lora_requests_info"
)
# A sample line of a wanted family: "\n" "vllm:" NAME ["{" LABELS "}"] WS VALUE [WS TIMESTAMP].
# Group 1: the name without "vllm:", group 2: the text between the braces (None without labels), group 3: the
# value token. LABELS is a run of unquoted characters other than '}' and newline, and quoted strings that may
# hold escaped characters (so '}' or ',' inside a label value do not end the label set). The regex starts
# with a literal, which CPython's engine searches for before trying the rest, so HELP/TYPE lines (which start
# with "# ") are skipped at C speed. The loops are unrolled and possessive (`*+`, Python 3.11): one pass over
# an 800-character label set and no backtracking blow-up on a malformed one.
_QUOTED = rb'"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"'
_SAMPLE = re.compile(
    rb"\nvllm:(" + _FAMILIES + rb")"
    rb'(?:\{([^"}\n]*+(?:' + _QUOTED + rb'[^"}\n]*+)*+)\})?'
    rb"[ \t]+([^ \t\r\n]+)"
)
_LABEL = re.compile(rb'([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*"([^"\\\n]*+(?:\\.[^"\\\n]*+)*+)"')
_ESCAPE = re.compile(r'\\[\\n"]')
_UNESCAPED = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}


def _unescape(m: re.Match[str]) -> str:
    return _UNESCAPED[m.group(0)]


def _labels(block: bytes, wanted: frozenset[bytes]) -> dict[str, str]:
    """The `wanted` labels of a label set (the text between a sample's braces), unescaped as the exposition
    format defines: backslash-backslash, backslash-quote and backslash-n; any other backslash stays as it is.
    Labels not wanted are skipped without decoding."""
    out: dict[str, str] = {}
    for key, raw in _LABEL.findall(block):
        if key in wanted:
            value = raw.decode("utf-8", "replace")
            if "\\" in value:
                value = _ESCAPE.sub(_unescape, value)
            out[key.decode("ascii")] = value
    return out


_REASON = frozenset({b"reason"})
_SLEEP_STATE = frozenset({b"sleep_state"})
_CACHE_CONFIG = frozenset({b"block_size", b"num_gpu_blocks"})
_LORA = frozenset({b"max_lora", b"running_lora_adapters", b"waiting_lora_adapters"})


def _int_label(labels: dict[str, str], key: str) -> int | None:
    try:
        return int(labels[key])
    except (KeyError, ValueError):
        return None


def _adapters(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(s for s in (p.strip() for p in value.split(",")) if s)


def _min_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def parse_vllm_metrics(text: bytes | str) -> VLLMLoad:
    """Reduce one vLLM `/metrics` body to a `VLLMLoad`.

    Raises `MetricsParseError` (a `ValueError`) when none of ``vllm:num_requests_running``,
    ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (or ``vllm:gpu_cache_usage_perc``) has a
    sample on the page.
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    if data.startswith(b"vllm:"):
        data = b"\n" + data  # the pattern anchors on the newline before a sample; give the first line one

    running = waiting = deferred = queries = hits = 0.0
    seen_running = seen_waiting = False
    kv: float | None = None
    gpu_cache: float | None = None
    not_awake = False
    sleep_level = 0
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    lora_block: bytes | None = None
    lora_stamp = -math.inf

    for m in _SAMPLE.finditer(data):
        name, block, raw = m.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        if name == b"num_requests_running":
            running += value
            seen_running = True
        elif name == b"num_requests_waiting":
            waiting += value
            seen_waiting = True
        elif name == b"kv_cache_usage_perc":
            # max that lets a NaN through: once NaN, `value > kv` stays False
            if kv is None or value > kv or value != value:
                kv = value
        elif name == b"prefix_cache_queries_total":
            queries += value
        elif name == b"prefix_cache_hits_total":
            hits += value
        elif name == b"num_requests_waiting_by_reason":
            if block is not None and _labels(block, _REASON).get("reason") == "deferred":
                deferred += value
        elif name == b"engine_sleep_state":
            state = _labels(block, _SLEEP_STATE).get("sleep_state") if block is not None else None
            if state == "awake":
                if value != 1.0:
                    not_awake = True
            elif state == "weights_offloaded":
                if value == 1.0:
                    sleep_level = max(sleep_level, 1)
            elif state == "discard_all" and value == 1.0:
                sleep_level = 2
        elif name == b"lora_requests_info":
            # the value is the time the label set was last written; NaN never wins
            if value > lora_stamp:
                lora_stamp = value
                lora_block = block if block is not None else b""
        elif name == b"cache_config_info":
            if block is not None:
                labels = _labels(block, _CACHE_CONFIG)
                block_size = _min_opt(block_size, _int_label(labels, "block_size"))
                num_gpu_blocks = _min_opt(num_gpu_blocks, _int_label(labels, "num_gpu_blocks"))
        elif gpu_cache is None or value > gpu_cache or value != value:  # gpu_cache_usage_perc
            gpu_cache = value

    if kv is None:
        kv = gpu_cache
    if kv is None and not seen_running and not seen_waiting:
        head = data.lstrip()[:80].decode("utf-8", "replace")
        raise MetricsParseError(
            "not a vLLM /metrics page: no sample of vllm:num_requests_running, vllm:num_requests_waiting or "
            f"vllm:kv_cache_usage_perc (nor the older vllm:gpu_cache_usage_perc); "
            f"{len(data)} bytes starting {head!r}"
        )

    lora_running: tuple[str, ...] = ()
    lora_waiting: tuple[str, ...] = ()
    max_lora: int | None = None
    if lora_block is not None:
        labels = _labels(lora_block, _LORA)
        lora_running = _adapters(labels.get("running_lora_adapters"))
        lora_waiting = _adapters(labels.get("waiting_lora_adapters"))
        max_lora = _int_label(labels, "max_lora")

    return VLLMLoad(
        running=running,
        waiting=waiting,
        waiting_deferred=deferred,
        kv_usage=0.0 if kv is None else kv,
        prefix_queries=queries,
        prefix_hits=hits,
        awake=not not_awake and sleep_level == 0,
        sleep_level=sleep_level,
        block_size=block_size,
        num_gpu_blocks=num_gpu_blocks,
        lora_running=lora_running,
        lora_waiting=lora_waiting,
        max_lora=max_lora,
    )
