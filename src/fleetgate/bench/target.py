"""What the load tester asks the target itself, besides the requests it times: its tokenizer's sizes (via
`/tokenize`) and its prefix-cache counters (via `/metrics`, read before and after a run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from fleetgate.bench.sizing import calibration_sample
from fleetgate.fleet.vllm_metrics import MetricsParseError, parse_vllm_metrics
from fleetgate.tokenizer import Tokenizer

__all__ = ["PrefixCounters", "measure_ratio", "prefix_cache_delta", "read_prefix_counters", "server_root"]


def server_root(url: str) -> str:
    """The server's root for its own routes (/tokenize, /metrics): the base URL without /v1."""
    return url.rstrip("/").removesuffix("/v1")


def measure_ratio(url: str, model: str, api_key: str | None) -> tuple[float, str]:
    """Target tokens per fleetgate-tokenizer token, from the target's /tokenize (1.0 when it has none), and
    a sentence saying how prompt sizes were set."""
    root = server_root(url)
    sample = calibration_sample()
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    fallback = "prompt lengths are counted with fleetgate's own tokenizer"
    try:
        r = httpx.post(
            f"{root}/tokenize", json={"model": model, "prompt": sample}, headers=headers, timeout=30
        )
        if r.status_code == 200:
            count = int(r.json()["count"])
            ours = Tokenizer().count(sample)
            return count / ours, (
                f"prompt lengths are in the target's tokens: its /tokenize counts {count} tokens in a sample "
                f"where fleetgate's tokenizer counts {ours} (ratio {count / ours:.2f})"
            )
        if r.status_code in (401, 403):
            return 1.0, f"{root}/tokenize answered {r.status_code}: pass --api-key; {fallback}"
        return 1.0, f"{root}/tokenize answered {r.status_code}: {fallback}"
    except (httpx.HTTPError, ValueError, KeyError) as e:
        return 1.0, f"{root}/tokenize unavailable ({type(e).__name__}): {fallback}"


@dataclass(frozen=True)
class PrefixCounters:
    queries: float  # prompt tokens looked up in the prefix cache (vllm:prefix_cache_queries_total)
    hits: float  # of those, tokens found there (vllm:prefix_cache_hits_total)


def read_prefix_counters(url: str, api_key: str | None) -> PrefixCounters | str:
    """The target's prefix-cache counters from a vLLM-format /metrics at `url`, or why there are none."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as e:
        return f"{url} unavailable ({type(e).__name__})"
    if r.status_code != 200:
        return f"{url} answered {r.status_code}"
    if b"vllm:prefix_cache_queries" not in r.content:
        return f"{url} has no vllm:prefix_cache_* counters"
    try:
        load = parse_vllm_metrics(r.content)
    except MetricsParseError as e:
        return f"{url}: {e}"
    return PrefixCounters(load.prefix_queries, load.prefix_hits)


def prefix_cache_delta(url: str, before: PrefixCounters | str, after: PrefixCounters | str) -> dict[str, Any]:
    """For results.json: the counters' change over the run and the hit rate, or the reason they are absent."""
    if isinstance(before, str) or isinstance(after, str):
        return {"source": url, "available": False, "reason": before if isinstance(before, str) else after}
    queries, hits = after.queries - before.queries, after.hits - before.hits
    return {
        "source": url,
        "available": True,
        "queried_tokens": queries,
        "hit_tokens": hits,
        "hit_rate": hits / queries if queries > 0 else None,
    }
