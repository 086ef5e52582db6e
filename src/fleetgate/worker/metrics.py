"""vLLM's `/metrics` page: the same families, types, labels, buckets and number format as vLLM 0.26.

Rendered straight to Prometheus text (no client library on the hot path): the engine bumps plain counters
and a scrape formats them, in the order vLLM writes them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sized
from typing import Protocol

from fleetgate.worker.exposition import Histogram, go_float, process_families

_TIME_BUCKETS: tuple[float, ...] = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
)
_TIME_BUCKETS += (240.0, 480.0, 960.0, 1920.0, 7680.0)
_TOKEN_BUCKETS: tuple[float, ...] = (
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    2000.0,
    5000.0,
    10000.0,
)
_TOKEN_BUCKETS += (20000.0, 50000.0, 100000.0)
_TTFT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
_TTFT_BUCKETS += (20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
_ITL_BUCKETS += (20.0, 40.0, 80.0)
_ITER_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0)
_N_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


class RequestView(Protocol):
    """What the counters read from a request: the simulator's and the embedded engine's both qualify."""

    prompt: list[int]
    output: list[int]
    max_tokens: int
    params_n: int
    cached_tokens: int
    arrival: float
    scheduled_at: float
    first_token_at: float
    last_token_at: float


class EngineView(Protocol):
    """What a scrape reads from the engine."""

    @property
    def running(self) -> Sized: ...
    @property
    def sleep_level(self) -> int: ...

    def waiting_by_reason(self) -> tuple[int, int]: ...
    def lora_state(self) -> tuple[list[str], list[str]]: ...
    def kv_usage(self) -> float: ...


class EngineStats:
    """Counters and histograms the engine updates; `render` writes vLLM's exposition text."""

    def __init__(self, model_name: str, cache_info: dict[str, str], max_loras: int | None, tool_parser: bool):
        self.labels = f'engine="0",model_name="{model_name}"'
        self.model_name = model_name
        self.cache_info = cache_info
        self.max_loras = max_loras
        self.tool_parser = tool_parser
        self.created = time.time()
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self.tool_parser_calls: dict[tuple[str, str], int] = {}
        self.lora_info: dict[tuple[str, str], float] = {}
        h = Histogram
        self.h_prompt = h(_TOKEN_BUCKETS)
        self.h_generation = h(_TOKEN_BUCKETS)
        self.h_iteration = h(_ITER_BUCKETS)
        self.h_max_gen = h(_TOKEN_BUCKETS)
        self.h_n = h(_N_BUCKETS)
        self.h_max_tokens = h(_TOKEN_BUCKETS)
        self.h_ttft = h(_TTFT_BUCKETS)
        self.h_itl = h(_ITL_BUCKETS)
        self.h_tpot = h(_ITL_BUCKETS)
        self.h_e2e = h(_TIME_BUCKETS)
        self.h_queue = h(_TIME_BUCKETS)
        self.h_inference = h(_TIME_BUCKETS)
        self.h_prefill = h(_TIME_BUCKETS)
        self.h_decode = h(_TIME_BUCKETS)
        self.h_prefill_kv = h(_TOKEN_BUCKETS)

    # ---- updates from the engine -----------------------------------------------------------------------
    def on_arrival(self, req: RequestView) -> None:
        self.h_max_tokens.observe(req.max_tokens)

    def on_prefix_query(self, prompt_tokens: int, hit_tokens: int) -> None:
        self.prefix_queries += prompt_tokens
        self.prefix_hits += hit_tokens

    def on_iteration(self, tokens: int) -> None:
        self.h_iteration.observe(tokens)

    def on_token_gap(self, seconds: float) -> None:
        self.h_itl.observe(seconds)

    def on_finish(self, req: RequestView, reason: str, now: float) -> None:
        self.success[reason] += 1
        out = len(req.output)
        self.generation_tokens += out
        if req.cached_tokens < 0:
            return  # aborted before it was ever scheduled: vLLM records only the outcome
        prompt = len(req.prompt)
        self.prompt_tokens += prompt
        self.cached_tokens += req.cached_tokens
        self.h_prompt.observe(prompt)
        self.h_generation.observe(out)
        self.h_max_gen.observe(req.max_tokens)
        self.h_n.observe(req.params_n)
        self.h_prefill_kv.observe(prompt - req.cached_tokens)
        self.h_e2e.observe(now - req.arrival)
        self.h_queue.observe(req.scheduled_at - req.arrival)
        if req.first_token_at:
            self.h_ttft.observe(req.first_token_at - req.arrival)
            self.h_prefill.observe(req.first_token_at - req.scheduled_at)
            decode = req.last_token_at - req.first_token_at
            self.h_decode.observe(decode)
            self.h_inference.observe(req.last_token_at - req.scheduled_at)
            if out > 1:
                self.h_tpot.observe(decode / (out - 1))

    def on_tool_parse(self, streaming: bool, called: bool) -> None:
        key = ("streaming" if streaming else "non_streaming", "tool_call" if called else "no_tool_call")
        self.tool_parser_calls[key] = self.tool_parser_calls.get(key, 0) + 1

    def on_lora_change(self, running: list[str], waiting: list[str]) -> None:
        # vLLM keeps every label set it ever wrote; the newest timestamp marks the current one.
        self.lora_info[(",".join(running), ",".join(waiting))] = time.time()

    # ---- exposition ------------------------------------------------------------------------------------
    def render(self, engine: EngineView) -> str:
        out: list[str] = []
        lab = self.labels
        created = go_float(self.created)

        def family(name: str, kind: str, help_: str, samples: Iterable[str]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)

        def counter(base: str, help_: str, value: float, labels: str = lab) -> None:
            family(f"{base}_total", "counter", help_, [f"{base}_total{{{labels}}} {go_float(value)}"])
            family(f"{base}_created", "gauge", help_, [f"{base}_created{{{labels}}} {created}"])

        def counter_multi(base: str, help_: str, rows: list[tuple[str, float]]) -> None:
            family(
                f"{base}_total", "counter", help_, [f"{base}_total{{{lb}}} {go_float(v)}" for lb, v in rows]
            )
            family(f"{base}_created", "gauge", help_, [f"{base}_created{{{lb}}} {created}" for lb, _ in rows])

        def histogram(name: str, help_: str, h: Histogram) -> None:
            lines: list[str] = []
            acc = 0
            for le, c in zip((*h.buckets, math.inf), h.counts, strict=True):
                acc += c
                lines.append(f'{name}_bucket{{{lab},le="{go_float(le)}"}} {go_float(acc)}')
            lines.append(f"{name}_count{{{lab}}} {go_float(h.n)}")
            lines.append(f"{name}_sum{{{lab}}} {go_float(h.total)}")
            family(name, "histogram", help_, lines)
            family(f"{name}_created", "gauge", help_, [f"{name}_created{{{lab}}} {created}"])

        def gauge(name: str, help_: str, rows: list[tuple[str, float]]) -> None:
            family(name, "gauge", help_, [f"{name}{{{lb}}} {go_float(v)}" for lb, v in rows])

        out.extend(process_families())
        mfu = "(for Model Flops Utilization calculations)."
        counter(
            "vllm:estimated_flops_per_gpu", f"Estimated number of floating point operations per GPU {mfu}", 0
        )
        counter(
            "vllm:estimated_read_bytes_per_gpu",
            f"Estimated number of bytes read from memory per GPU {mfu}",
            0,
        )
        counter(
            "vllm:estimated_write_bytes_per_gpu",
            f"Estimated number of bytes written to memory per GPU {mfu}",
            0,
        )
        capacity, deferred = engine.waiting_by_reason()
        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            [(lab, len(engine.running))],
        )
        gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            [(lab, capacity + deferred)],
        )
        gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: "
            "'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints "
            "(LoRA budget, KV transfer, blocked status). "
            "Sum of all reasons equals vllm:num_requests_waiting.",
            [(f'{lab},reason="capacity"', capacity), (f'{lab},reason="deferred"', deferred)],
        )
        level = engine.sleep_level
        gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
            "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            [
                (f'{lab},sleep_state="awake"', 0 if level else 1),
                (f'{lab},sleep_state="weights_offloaded"', 1 if level == 1 else 0),
                (f'{lab},sleep_state="discard_all"', 1 if level == 2 else 0),
            ],
        )
        gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            [(lab, engine.kv_usage())],
        )
        counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prefix_queries,
        )
        counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            self.prefix_hits,
        )
        ext = "from KV connector cross-instance cache sharing, in terms of number of"
        counter(
            "vllm:external_prefix_cache_queries", f"External prefix cache queries {ext} queried tokens.", 0
        )
        counter("vllm:external_prefix_cache_hits", f"External prefix cache hits {ext} cached tokens.", 0)
        if self.max_loras is not None:
            rows = [
                (f'max_lora="{self.max_loras}",running_lora_adapters="{r}",waiting_lora_adapters="{w}"', ts)
                for (r, w), ts in self.lora_info.items()
            ]
            family(
                "vllm:lora_requests_info",
                "gauge",
                "Running stats on lora requests.",
                [f"vllm:lora_requests_info{{{lb}}} {go_float(v)}" for lb, v in rows],
            )
        counter("vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items.", 0)
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.", 0)
        counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", self.preemptions)
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
        counter_multi(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            [
                (f'{lab},source="local_compute"', self.prompt_tokens - self.cached_tokens),
                (f'{lab},source="local_cache_hit"', self.cached_tokens),
                (f'{lab},source="external_kv_transfer"', 0),
            ],
        )
        counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local + external).",
            self.cached_tokens,
        )
        counter("vllm:generation_tokens", "Number of generation tokens processed.", self.generation_tokens)
        counter_multi(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [
                (f'engine="0",finished_reason="{r}",model_name="{self.model_name}"', self.success[r])
                for r in FINISH_REASONS
            ],
        )
        histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", self.h_prompt)
        histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", self.h_generation
        )
        histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", self.h_iteration
        )
        histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            self.h_max_gen,
        )
        histogram("vllm:request_params_n", "Histogram of the n request parameter.", self.h_n)
        histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            self.h_max_tokens,
        )
        histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.h_ttft
        )
        histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", self.h_itl
        )
        histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            self.h_tpot,
        )
        histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.h_e2e
        )
        histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            self.h_queue,
        )
        histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            self.h_inference,
        )
        histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            self.h_prefill,
        )
        histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            self.h_decode,
        )
        histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            self.h_prefill_kv,
        )
        info = ",".join(f'{k}="{v}"' for k, v in sorted({**self.cache_info, "engine": "0"}.items()))
        gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", [(info, 1.0)])
        if self.tool_parser:
            help_ = (
                "Total number of ToolParser invocations. Non-streaming increments once per choice; "
                "streaming increments once per delta."
            )
            rows = [
                (
                    f'mode="{mode}",model_name="{self.model_name}",outcome="{outcome}",request_type="{rt}"',
                    float(self.tool_parser_calls.get((mode, outcome), 0) if rt == "chat_completions" else 0),
                )
                for mode in ("streaming", "non_streaming")
                for outcome in ("tool_call", "no_tool_call")
                for rt in ("chat_completions", "responses", "other")
            ]
            counter_multi("vllm:tool_call_parser_invocations", help_, rows)
        out.append("")
        return "\n".join(out)
