"""What a simulated vLLM start prints about itself: the plan (model, sizes, phase times) and the text of the
banner and the resolved configuration, copied from a recorded vLLM 0.26.0 start (see startup_log.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StartupPlan:
    version: str
    model: str
    served_model_names: list[str]
    host: str
    port: int
    architecture: str
    max_model_len: int
    max_num_batched_tokens: int
    kv_cache_tokens: int
    weights_gib: float
    enforce_eager: bool
    non_default_args: dict[str, object]
    load_seconds: float
    compile_seconds: float
    graph_seconds: float
    other_seconds: float
    routes: list[tuple[str, str]]

    def __post_init__(self) -> None:
        for name in ("load_seconds", "compile_seconds", "graph_seconds", "other_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        # An eager server never compiles or captures graphs; time given for those phases would
        # vanish from the log and make the total disagree with the lines.
        if self.enforce_eager and (self.compile_seconds or self.graph_seconds):
            raise ValueError("enforce_eager plans must have compile_seconds == graph_seconds == 0")
        if self.max_model_len <= 0 or self.kv_cache_tokens <= 0:
            raise ValueError("max_model_len and kv_cache_tokens must be positive")

    @property
    def total_seconds(self) -> float:
        """Offset of the 'Starting vLLM server' line: when the server starts answering."""
        return self.load_seconds + self.compile_seconds + self.graph_seconds + self.other_seconds


def banner(plan: StartupPlan) -> list[str]:
    # vLLM's banner string uses CRLF line ends: the recorded bytes carry '\r' on the first five lines.
    return [
        "\r",
        "       █     █     █▄   ▄█\r",
        f" ▄▄ ▄█ █     █     █ ▀▄▀ █  version {plan.version}\r",
        f"  █▄█▀ █     █     █     █  model   {plan.model}\r",
        "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀\r",
        "",
    ]


def config_lines(plan: StartupPlan) -> list[tuple[str, str, str]]:
    """The config-resolution lines that both the API server and the engine core print."""
    lines = [("INFO", "vllm.py:1109", "Asynchronous scheduling is enabled.")]
    if plan.enforce_eager:
        lines += [
            (
                "WARNING",
                "vllm.py:1163",
                "Enforce eager set, disabling torch.compile and CUDAGraphs. This is equivalent to "
                "setting -cc.mode=none -cc.cudagraph_mode=none",
            ),
            (
                "WARNING",
                "vllm.py:1213",
                "Inductor compilation was disabled by user settings, optimizations settings that are "
                "only active during inductor compilation will be ignored.",
            ),
        ]
    lines.append(
        (
            "INFO",
            "kernel.py:295",
            f"Final IR op priority after setting platform defaults: {ir_priority(plan)}",
        )
    )
    if plan.enforce_eager:
        lines += [
            ("INFO", "vllm.py:1392", "Cudagraph is disabled under eager mode"),
            ("INFO", "compilation.py:329", "Enabled custom fusions: norm_quant, act_quant"),
        ]
    return lines


def ir_priority(plan: StartupPlan) -> str:
    ops = "['vllm_c', 'native']" if plan.enforce_eager else "['native']"
    return f"IrOpPriorityConfig(rms_norm={ops}, fused_add_rms_norm={ops})"


def capture_sizes(max_size: int) -> list[int]:
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, max_size + 1, 16)]
    return [s for s in sizes if s <= max_size]


def compilation_config(plan: StartupPlan) -> str:
    if plan.enforce_eager:
        mode, custom_ops, splitting = "<CompilationMode.NONE: 0>", "['all']", "[]"
        graph_mode, max_capture = "<CUDAGraphMode.NONE: 0>", 0
    else:
        mode, custom_ops = "<CompilationMode.VLLM_COMPILE: 3>", "['none']"
        splitting = "['vllm::unified_attention_with_output', 'vllm::unified_mla_attention_with_output']"
        graph_mode, max_capture = "<CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>", 512
    return (
        f"{{'mode': {mode}, 'debug_dump_path': None, 'cache_dir': '', "
        f"'compile_cache_save_format': 'binary', 'backend': 'inductor', 'custom_ops': {custom_ops}, "
        f"'splitting_ops': {splitting}, 'compile_sizes': [], "
        f"'compile_ranges_endpoints': [{plan.max_num_batched_tokens}], 'cudagraph_mode': {graph_mode}, "
        f"'cudagraph_num_of_warmups': 1, 'cudagraph_capture_sizes': {capture_sizes(max_capture)}, "
        f"'max_cudagraph_capture_size': {max_capture}, 'local_cache_dir': None}}"
    )


def engine_config(plan: StartupPlan) -> str:
    # The recording cuts this line at 400 characters (after 'tensor_parallel_size=1, pipeli'); the
    # fields past that follow the layout vLLM 0.2x prints, with this plan's values.
    args = plan.non_default_args
    served = plan.served_model_names[0] if plan.served_model_names else plan.model
    return (
        f"model={plan.model!r}, speculative_config=None, tokenizer={plan.model!r}, "
        f"skip_tokenizer_init=False, tokenizer_mode=auto, revision=None, tokenizer_revision=None, "
        f"trust_remote_code={bool(args.get('trust_remote_code', False))}, dtype=torch.bfloat16, "
        f"max_seq_len={plan.max_model_len}, download_dir=None, "
        f"load_format={args.get('load_format', 'auto')}, "
        f"tensor_parallel_size={args.get('tensor_parallel_size', 1)}, pipeline_parallel_size=1, "
        f"data_parallel_size=1, decode_context_parallel_size=1, dcp_comm_backend=ag_rs, "
        f"disable_custom_all_reduce=False, quantization=None, quantization_config=None, "
        f"enforce_eager={plan.enforce_eager}, enable_return_routed_experts=False, kv_cache_dtype=auto, "
        f"device_config=cuda, structured_outputs_config=StructuredOutputsConfig(backend='auto', "
        f"disable_any_whitespace=False, disable_additional_properties=False, reasoning_parser='', "
        f"reasoning_parser_plugin='', enable_in_reasoning=False), "
        f"observability_config=ObservabilityConfig(show_hidden_metrics_for_version=None, "
        f"otlp_traces_endpoint=None, collect_detailed_traces=None, kv_cache_metrics=False, "
        f"kv_cache_metrics_sample=0.01, cudagraph_metrics=False, enable_layerwise_nvtx_tracing=False, "
        f"enable_mfu_metrics=False, enable_mm_processor_stats=False, "
        f"enable_logging_iteration_details=False, jit_monitor_mode='warn', jit_monitor_verbose=False), "
        f"seed=0, served_model_name={served}, enable_prefix_caching=True, enable_chunked_prefill=True, "
        f"pooler_config=None, compilation_config={compilation_config(plan)}, "
        f"kernel_config=KernelConfig(ir_op_priority={ir_priority(plan)}, "
        f"enable_flashinfer_autotune=True, moe_backend='auto', linear_backend='auto')"
    )
