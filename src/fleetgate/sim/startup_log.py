"""Startup log lines of a simulated vLLM 0.26 server.

Tools that watch a vLLM log (startup-phase parsers, readiness probes, dashboards) key on the exact
text, the ``[file.py:line]`` tags and the ``(APIServer pid=N)`` / ``(EngineCore pid=M)`` prefixes, so
every line here copies one recorded from a real vLLM 0.26.0 on an H200
(``tests/data/startup_log_*.txt``). Lines that only reflect the recording host (the c10d
``socket.cpp`` hostname warning, the ulimit warning) are left out.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fleetgate.sim.startup_plan import StartupPlan, banner, config_lines, engine_config

__all__ = ["RECORDED_ROUTES", "StartupPlan", "startup_lines"]

# The route list of the default-mode recording, in vLLM's order. The recording stops after
# /v1/chat/completions, so this is a prefix of what vLLM prints, not all of it.
RECORDED_ROUTES: tuple[tuple[str, str], ...] = (
    ("/openapi.json", "HEAD, GET"),
    ("/docs", "HEAD, GET"),
    ("/docs/oauth2-redirect", "HEAD, GET"),
    ("/redoc", "HEAD, GET"),
    ("/load", "GET"),
    ("/version", "GET"),
    ("/health", "GET"),
    ("/metrics", "GET"),
    ("/tokenize", "POST"),
    ("/detokenize", "POST"),
    ("/v1/models", "GET"),
    ("/ping", "GET"),
    ("/ping", "POST"),
    ("/invocations", "POST"),
    ("/v1/chat/completions", "POST"),
)


# How other_seconds is spread over the gaps between phases, read off the default recording: 73 s
# of log from banner to 'Starting vLLM server', plus the ~19 s before the banner (interpreter and
# torch imports) that the reference README's 92 s to ready implies.
_SHARE_PROCESS_START = 0.20  # before the banner
_SHARE_CONFIG = 0.08  # banner -> resolved config
_SHARE_ENGINE_SPAWN = 0.30  # -> EngineCore process prints its config
_SHARE_DIST_INIT = 0.05  # -> 'Loading model from scratch'
_SHARE_PROFILE = 0.04  # profiling run and KV cache sizing
_SHARE_WARMUP = 0.22  # after graph capture -> 'init engine ... took'
_SHARE_HANDSHAKE = 0.05  # -> API server learns the supported tasks
# The remaining 0.06 is the API server's own start, up to 'Starting vLLM server'.

# Splits of compile_seconds as recorded (6.34 s Dynamo, 9.08 s Inductor of 17.81 s); the Inductor
# 'Cache the graph' line lands about halfway through its compile.
_DYNAMO_SHARE = 0.356
_INDUCTOR_SHARE = 0.51
_PROFILE_RUN_SHARE = 0.2  # of the profiling gap: the 'Initial profiling/warmup run' figure

# Memory picture of the recording's H200; only feeds the memory report lines.
_GPU_TOTAL_GIB = 139.8
_GPU_FREE_GIB = 139.29
_GPU_MEMORY_UTILIZATION = 0.92
_NON_TORCH_GIB = 0.22
_PEAK_ACTIVATION_GIB = 1.1
_PEAK_ACTIVATION_EAGER_GIB = 0.88
_CUDA_GRAPH_GIB = 0.98
# vLLM holds this back from its --kv-cache-memory suggestions.
_REDUNDANCY_BUFFER_BYTES = 150 * (1 << 20)
_GIB_BYTES = 1 << 30
_BLOCK_SIZE = 16
# Llama-3.1-8B in bf16 (32 layers x 8 KV heads x 128 dims x K and V x 2 bytes), the recorded
# model; only used to say how many blocks num_gpu_blocks_override replaced.
_KV_BYTES_PER_TOKEN = 131072

_API = "APIServer"
_ENGINE = "EngineCore"


@dataclass(frozen=True)
class _Entry:
    offset: float
    process: str
    level: str
    # None marks uvicorn's own lines, which carry no timestamp or source tag.
    tag: str | None
    message: str


def _gib(value: float) -> str:
    # vLLM prints GiB figures as round(x, 2) through str(), hence '15.0' and not '15.00'.
    return str(round(value, 2))


def _utilization(plan: StartupPlan) -> float:
    # Args arrive as parsed CLI values (float) or as raw strings from a config; both read the same.
    return float(str(plan.non_default_args.get("gpu_memory_utilization", _GPU_MEMORY_UTILIZATION)))


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


def _memory_report(plan: StartupPlan, available_kv_gib: float) -> str:
    utilization = _utilization(plan)
    requested_gib = utilization * _GPU_TOTAL_GIB
    activation_gib = _PEAK_ACTIVATION_EAGER_GIB if plan.enforce_eager else _PEAK_ACTIVATION_GIB
    graph_gib = 0.0 if plan.enforce_eager else _CUDA_GRAPH_GIB
    non_kv_bytes = int((plan.weights_gib + activation_gib + _NON_TORCH_GIB + graph_gib) * _GIB_BYTES)
    to_requested = int(requested_gib * _GIB_BYTES) - non_kv_bytes - _REDUNDANCY_BUFFER_BYTES
    to_gpu = int(_GPU_FREE_GIB * _GIB_BYTES) - non_kv_bytes - _REDUNDANCY_BUFFER_BYTES
    return (
        f"Free memory on device ({_gib(_GPU_FREE_GIB)}/{_gib(_GPU_TOTAL_GIB)} GiB) on startup. "
        f"Desired GPU memory utilization is ({utilization}, {_gib(requested_gib)} GiB). "
        f"Actual usage is {_gib(plan.weights_gib)} GiB for weight, {_gib(activation_gib)} GiB for peak "
        f"activation, {_gib(_NON_TORCH_GIB)} GiB for non-torch memory, and {_gib(graph_gib)} GiB for "
        f"CUDAGraph memory. Replace gpu_memory_utilization config with `--kv-cache-memory={to_requested}` "
        f"({_gib(to_requested / _GIB_BYTES)} GiB) to fit into requested memory, or "
        f"`--kv-cache-memory={to_gpu}` ({_gib(to_gpu / _GIB_BYTES)} GiB) to fully utilize gpu memory. "
        f"Current kv cache memory in use is {_gib(available_kv_gib)} GiB."
    )


def _entries(plan: StartupPlan, api_pid: int, engine_pid: int) -> list[_Entry]:
    entries: list[_Entry] = []
    t = 0.0
    total = plan.total_seconds
    other = plan.other_seconds

    def api(level: str, tag: str, message: str) -> None:
        entries.append(_Entry(t, _API, level, tag, message))

    def engine(level: str, tag: str, message: str) -> None:
        entries.append(_Entry(t, _ENGINE, level, tag, message))

    # API server: banner and config resolution.
    t += other * _SHARE_PROCESS_START
    for text in banner(plan):
        api("INFO", "api_utils.py:345", text)
    api("INFO", "api_utils.py:273", f"non-default args: {plan.non_default_args!r}")
    t += other * _SHARE_CONFIG
    api("INFO", "model.py:623", f"Resolved architecture: {plan.architecture}")
    api("INFO", "model.py:1788", f"Using max model len {plan.max_model_len}")
    api(
        "INFO",
        "scheduler.py:252",
        f"Chunked prefill is enabled with max_num_batched_tokens={plan.max_num_batched_tokens}.",
    )
    for level, tag, message in config_lines(plan):
        api(level, tag, message)

    # Engine core process: distributed init and weight loading.
    t += other * _SHARE_ENGINE_SPAWN
    engine(
        "INFO",
        "core.py:116",
        f"Initializing a V1 LLM engine (v{plan.version}) with config: {engine_config(plan)}",
    )
    t += other * _SHARE_DIST_INIT * 0.6
    dist_host = "127.0.0.1" if plan.host in ("", "0.0.0.0", "::") else plan.host
    dist_port = 30000 + engine_pid % 30000
    engine(
        "INFO",
        "parallel_state.py:1615",
        f"world_size=1 rank=0 local_rank=0 distributed_init_method=tcp://{dist_host}:{dist_port} "
        "backend=nccl",
    )
    engine(
        "INFO",
        "parallel_state.py:1946",
        "rank 0 in world size 1 is assigned as DP rank 0, PP rank 0, PCP rank 0, TP rank 0, "
        "EP rank N/A, EPLB rank N/A",
    )
    engine("INFO", "gpu_worker.py:378", "Using V2 Model Runner")
    t += other * _SHARE_DIST_INIT * 0.4
    engine("INFO", "model_runner.py:284", "Loading model from scratch...")
    engine(
        "INFO",
        "cuda.py:482",
        "Using FLASH_ATTN attention backend out of potential backends: "
        "['FLASH_ATTN', 'TRITON_ATTN', 'FLEX_ATTENTION'].",
    )
    engine("INFO", "flash_attn.py:776", "Using FlashAttention version 3")
    t += plan.load_seconds
    load_done = t
    engine(
        "INFO",
        "model_runner.py:305",
        f"Model loading took {_gib(plan.weights_gib)} GiB and {plan.load_seconds:.6f} seconds",
    )
    engine(
        "INFO",
        "topk_topp_sampler.py:39",
        "FlashInfer top-p/top-k sampling disabled via VLLM_USE_FLASHINFER_SAMPLER=0.",
    )

    # torch.compile: Dynamo trace, then Inductor compiles the one compile range, then AOT save.
    profile_gap = other * _SHARE_PROFILE
    if not plan.enforce_eager:
        compile_start = t
        dynamo = plan.compile_seconds * _DYNAMO_SHARE
        inductor = plan.compile_seconds * _INDUCTOR_SHARE
        cache_key = _digest(plan.model, plan.version, plan.max_num_batched_tokens)
        t = compile_start + dynamo
        engine(
            "INFO",
            "backends.py:1094",
            f"Using cache directory: /root/.cache/vllm/torch_compile_cache/{cache_key[:10]}/rank_0_0/"
            "backbone for vLLM's torch.compile",
        )
        engine("INFO", "backends.py:1155", f"Dynamo bytecode transform time: {dynamo:.2f} s")
        compile_range = f"(1, {plan.max_num_batched_tokens})"
        t = compile_start + dynamo + inductor / 2
        engine("INFO", "backends.py:378", f"Cache the graph of compile range {compile_range} for later use")
        t = compile_start + dynamo + inductor
        engine(
            "INFO",
            "backends.py:393",
            f"Compiling a graph for compile range {compile_range} takes {inductor:.2f} s",
        )
        t = compile_start + plan.compile_seconds
        engine(
            "INFO",
            "decorators.py:708",
            "saved AOT compiled function to /root/.cache/vllm/torch_compile_cache/torch_aot_compile/"
            f"{_digest(cache_key, 'aot')}/rank_0_0/model",
        )
        engine("INFO", "monitor.py:53", f"torch.compile took {plan.compile_seconds:.2f} s in total")
        engine(
            "INFO",
            "monitor.py:81",
            f"Initial profiling/warmup run took {profile_gap * _PROFILE_RUN_SHARE:.2f} s",
        )

    # Profiling sizes the KV cache.
    t += profile_gap
    utilization = _utilization(plan)
    activation = _PEAK_ACTIVATION_EAGER_GIB if plan.enforce_eager else _PEAK_ACTIVATION_GIB
    available_kv_gib = utilization * _GPU_TOTAL_GIB - plan.weights_gib - activation - _NON_TORCH_GIB
    engine("INFO", "gpu_worker.py:560", f"Available KV cache memory: {_gib(available_kv_gib)} GiB")
    override = plan.non_default_args.get("num_gpu_blocks_override")
    if override is not None:
        natural_blocks = int(available_kv_gib * _GIB_BYTES) // (_KV_BYTES_PER_TOKEN * _BLOCK_SIZE)
        engine(
            "INFO",
            "kv_cache_utils.py:2115",
            f"Overriding num_gpu_blocks={natural_blocks} with num_gpu_blocks_override={override}",
        )
    engine("INFO", "kv_cache_utils.py:2177", f"GPU KV cache size: {plan.kv_cache_tokens:,} tokens")
    engine(
        "INFO",
        "kv_cache_utils.py:2178",
        f"Maximum concurrency for {plan.max_model_len:,} tokens per request: "
        f"{plan.kv_cache_tokens / plan.max_model_len:.2f}x",
    )
    engine("INFO", "ll_bf16.py:30", "cuteDSL (CUTLASS Python) not available, ll_bf16_gemm disabled")
    engine(
        "INFO",
        "cutedsl_warmup.py:101",
        "Skipping CuTeDSL warmup because no compile units were requested.",
    )
    if not plan.enforce_eager:
        t += plan.graph_seconds
        engine(
            "INFO",
            "model_runner.py:747",
            f"Graph capturing finished in {plan.graph_seconds:.0f} secs, took {_CUDA_GRAPH_GIB:.2f} GiB",
        )
    engine("INFO", "gpu_worker.py:857", _memory_report(plan, available_kv_gib))

    # Warmup, then the engine reports ready and the API server finishes starting.
    t += other * _SHARE_WARMUP
    engine(
        "INFO",
        "jit_monitor.py:79",
        "Kernel JIT monitor activated; monitored JIT compilations during inference will use mode=warn.",
    )
    init_took = t - load_done
    if plan.enforce_eager:
        engine(
            "INFO",
            "core.py:347",
            f"init engine (profile, create kv cache, warmup model) took {init_took:.2f} s",
        )
    else:
        engine(
            "INFO",
            "core.py:340",
            f"init engine (profile, create kv cache, warmup model) took {init_took:.2f} s "
            f"(compilation: {plan.compile_seconds:.2f} s)",
        )
    t += other * _SHARE_HANDSHAKE
    if plan.non_default_args.get("kv_events_config") is not None:
        engine("INFO", "kv_events.py:348", "Starting ZMQ publisher thread")
    for level, tag, message in config_lines(plan):
        engine(level, tag, message)
    api("INFO", "api_server.py:673", "Supported tasks: ['generate']")

    # The last gap ends exactly at the planned total, whatever the float sums above came to.
    t = total
    api(
        "INFO",
        "hf.py:540",
        "Detected the chat template content format to be 'openai'. You can set "
        "`--chat-template-content-format` to override this.",
    )
    api("INFO", "api_server.py:677", f"Starting vLLM server on http://{plan.host}:{plan.port}")
    api("INFO", "launcher.py:37", "Available routes are:")
    for path, methods in plan.routes:
        api("INFO", "launcher.py:46", f"Route: {path}, Methods: {methods}")
    for message in (
        f"Started server process [{api_pid}]",
        "Waiting for application startup.",
        "Application startup complete.",
    ):
        entries.append(_Entry(t, _API, "INFO", None, message))

    # Rounding in the shares can push a line a hair past the next one or past the total; clamp so
    # that offsets never run backwards and nothing precedes readiness by being late.
    clamped: list[_Entry] = []
    floor = 0.0
    for entry in entries:
        offset = min(max(entry.offset, floor), total)
        floor = offset
        clamped.append(_Entry(offset, entry.process, entry.level, entry.tag, entry.message))
    return clamped


def startup_lines(
    plan: StartupPlan, api_pid: int, engine_pid: int, now: Callable[[], float]
) -> Iterator[tuple[float, str]]:
    """Yields (offset_seconds_from_start, line) in order.

    The offsets sum phase durations so that the line announcing 'Starting vLLM server on
    http://HOST:PORT' comes at the total startup time and the route list right after it. Timestamps
    inside lines ('11-21 12:31:01' form, local time) are computed as now()+offset.
    """
    # One reading of the clock: a caller that sleeps until each offset must not shift later stamps.
    start = now()
    pids = {_API: api_pid, _ENGINE: engine_pid}
    for entry in _entries(plan, api_pid, engine_pid):
        prefix = f"({entry.process} pid={pids[entry.process]})"
        if entry.tag is None:
            # uvicorn's default formatter: level, colon, padding to 9 columns, no timestamp.
            yield entry.offset, f"{prefix} {entry.level + ':':<9} {entry.message}"
        else:
            stamp = time.strftime("%m-%d %H:%M:%S", time.localtime(start + entry.offset))
            yield entry.offset, f"{prefix} {entry.level} {stamp} [{entry.tag}] {entry.message}"
