"""The `fleetgate` command line."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleetgate import __version__

if TYPE_CHECKING:
    from fleetgate.config import FleetConfig

app = typer.Typer(
    name="fleetgate",
    help="An OpenAI-compatible serving layer for fleets of vLLM servers.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
sim_app = typer.Typer(
    help="Run simulated vLLM servers: same API, metrics and KV events as vLLM 0.26, no GPU needed.",
    invoke_without_command=True,
    add_completion=False,
    rich_markup_mode=None,
    subcommand_metavar="[COMMAND [ARGS]...]",
)
app.add_typer(sim_app, name="sim")
bench_app = typer.Typer(
    help="Load-test an OpenAI-compatible server: TTFT, ITL, throughput, goodput; results and a report.",
    invoke_without_command=True,
    add_completion=False,
    rich_markup_mode=None,
    subcommand_metavar="[COMMAND [ARGS]...]",
)
app.add_typer(bench_app, name="bench")
keys_app = typer.Typer(
    help="Issue, list, revoke and rotate API keys (stored hashed; running gateways see changes within a "
    "second).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(keys_app, name="keys")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fleetgate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """fleetgate: gateway, routing, scaling, simulator and load tester for vLLM fleets."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


@sim_app.callback()
def sim(
    ctx: typer.Context,
    profile: Annotated[
        str, typer.Option(help="Profile name (see `fleetgate sim profiles`) or a profile YAML file.")
    ] = "h200-llama-3.1-8b",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port of the first replica; replica i listens on port + i.")
    ] = 8000,
    replicas: Annotated[
        int, typer.Option(min=1, help="Independent simulated servers, one process each.")
    ] = 1,
    time_scale: Annotated[
        float,
        typer.Option(min=0.001, help="Run K times faster than the profiled GPU (all times divided by K)."),
    ] = 1.0,
    model_name: Annotated[
        str | None, typer.Option(help="Model name to serve (alias of --served-model-name).")
    ] = None,
    served_model_name: Annotated[
        list[str] | None, typer.Option(help="[vLLM] Name(s) the model is served under.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="[vLLM] Model path or id shown in /v1/models root.")
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(help="[vLLM] Context length.")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="[vLLM] Most sequences in one step.")] = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(help="[vLLM] Token budget of one step.")
    ] = None,
    num_gpu_blocks_override: Annotated[
        int | None, typer.Option(help="[vLLM] KV cache size in blocks.")
    ] = None,
    block_size: Annotated[int, typer.Option(help="[vLLM] Tokens per KV block.")] = 16,
    enable_prefix_caching: Annotated[
        bool,
        typer.Option("--enable-prefix-caching/--no-enable-prefix-caching", help="[vLLM] Prefix caching."),
    ] = True,
    enforce_eager: Annotated[
        bool, typer.Option(help="[vLLM] No CUDA graphs: faster start, slower steps.")
    ] = False,
    enable_lora: Annotated[bool, typer.Option(help="[vLLM] Serve LoRA adapters.")] = False,
    max_loras: Annotated[int, typer.Option(help="[vLLM] Adapters active in one step.")] = 1,
    max_lora_rank: Annotated[int, typer.Option(help="[vLLM] Accepted for compatibility.")] = 16,
    max_cpu_loras: Annotated[int | None, typer.Option(help="[vLLM] Accepted for compatibility.")] = None,
    lora_modules: Annotated[
        list[str] | None, typer.Option(help="[vLLM] NAME=PATH adapters loaded at start.")
    ] = None,
    enable_sleep_mode: Annotated[bool, typer.Option(help="[vLLM] Allow /sleep and /wake_up.")] = False,
    kv_events_config: Annotated[
        str | None, typer.Option(help="[vLLM] KV-cache events, e.g. '{\"enable_kv_cache_events\":true,...}'.")
    ] = None,
    enable_auto_tool_choice: Annotated[bool, typer.Option(help="[vLLM] Allow tool_choice=auto.")] = False,
    tool_call_parser: Annotated[
        str | None, typer.Option(help="[vLLM] Tool call format, e.g. hermes.")
    ] = None,
    gpu_memory_utilization: Annotated[float, typer.Option(help="[vLLM] Accepted for compatibility.")] = 0.92,
    seed: Annotated[int | None, typer.Option(help="Seed for generated text (per replica: seed + i).")] = None,
    startup_time: Annotated[
        float | None, typer.Option(help="Startup seconds before listening (default: the profile's).")
    ] = None,
    admin: Annotated[bool, typer.Option(help="Serve /_sim/state, /_sim/match and /_sim/faults.")] = False,
    fault_error_rate: Annotated[
        str, typer.Option(help="Inject errors, e.g. '503=0.1,429=0.05' (status=probability).")
    ] = "",
    fault_hang_rate: Annotated[float, typer.Option(help="Probability a request never gets an answer.")] = 0.0,
    fault_crash_rate: Annotated[
        float, typer.Option(help="Probability a stream kills the server mid-way.")
    ] = 0.0,
    fault_crash_after_tokens: Annotated[int, typer.Option(help="Tokens a crashing stream sends first.")] = 1,
    fault_first_byte_delay: Annotated[float, typer.Option(help="Seconds before any answer starts.")] = 0.0,
    fault_health: Annotated[str, typer.Option(help="Health answers: ok, hang or fail.")] = "ok",
    reuse_port: Annotated[
        bool, typer.Option(help="All replicas share --port (SO_REUSEPORT): one address, many processes.")
    ] = False,
    replica_index: Annotated[int, typer.Option(hidden=True)] = 0,
) -> None:
    """Simulated vLLM servers on consecutive ports. vLLM's flags and gating variables
    (VLLM_SERVER_DEV_MODE, VLLM_ALLOW_RUNTIME_LORA_UPDATING) keep vLLM's meaning."""
    if ctx.invoked_subcommand is not None:
        return
    from fleetgate.sim.cli_support import build_settings, replica_argv

    del max_lora_rank, max_cpu_loras, gpu_memory_utilization
    try:
        settings, startup, non_default = build_settings(
            profile=profile,
            host=host,
            port=port,
            time_scale=time_scale,
            served=[*(served_model_name or []), *([model_name] if model_name else [])],
            model=model,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            num_gpu_blocks_override=num_gpu_blocks_override,
            block_size=block_size,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            enable_lora=enable_lora,
            max_loras=max_loras,
            lora_modules=lora_modules or [],
            enable_sleep_mode=enable_sleep_mode,
            kv_events_config=kv_events_config,
            auto_tool_choice=enable_auto_tool_choice,
            tool_call_parser=tool_call_parser,
            seed=seed,
            startup_time=startup_time,
            admin=admin,
            dev_mode=_env_flag("VLLM_SERVER_DEV_MODE"),
            runtime_lora=_env_flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
            fault_error_rate=fault_error_rate,
            fault_hang_rate=fault_hang_rate,
            fault_crash_rate=fault_crash_rate,
            fault_crash_after_tokens=fault_crash_after_tokens,
            fault_first_byte_delay=fault_first_byte_delay,
            fault_health=fault_health,
            replica_index=replica_index,
            reuse_port=reuse_port,
        )
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if replicas == 1 and replica_index == 0 and startup > 0:
        # A silent minute and a half looks like a hang: say what the wait is and how to skip it (once for
        # a fleet of replicas: the first one says it).
        typer.echo(
            f"fleetgate sim: imitating vLLM's cold start ({startup / time_scale:.3g} s, profile {profile}) "
            f"before listening on http://{host}:{port}; --startup-time 0 skips it.",
            err=True,
        )
    if replicas == 1:
        from fleetgate.sim.launch import run_one

        run_one(settings, startup, non_default)
        return
    from fleetgate.sim.launch import supervise

    raise typer.Exit(supervise([replica_argv(sys.argv, i, port, seed, reuse_port) for i in range(replicas)]))


@sim_app.command("profiles")
def sim_profiles() -> None:
    """List the built-in simulator profiles."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from fleetgate.sim.profiles import load_profile, profile_names

    # Profile names are typed back: never cut. The model wraps, to keep 80 columns.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("profile", no_wrap=True)
    for head in ("KV tokens", "seqs", "start s"):
        table.add_column(head, justify="right", no_wrap=True)
    table.add_column("model", overflow="fold")
    measured = []
    for name in profile_names():
        p = load_profile(name)
        kv = p.kv.num_gpu_blocks * p.kv.block_size
        if p.derivation.startswith("Measured"):
            measured.append(name)
        startup = f"{p.startup.total(False):.0f}"
        table.add_row(name, f"{kv:,}", str(p.limits.max_num_seqs), startup, p.model)
    console = Console()
    console.print(table)
    console.print(
        f"Measured on the GPU: {', '.join(measured)}; the others are derived from it.", soft_wrap=False
    )


@sim_app.command("calibrate")
def sim_calibrate(
    profile: Annotated[str, typer.Option(help="Profile to check against the recorded H200 runs.")] = (
        "h200-llama-3.1-8b"
    ),
    fit: Annotated[bool, typer.Option(help="Refit the step coefficients on the fit rows first.")] = False,
) -> None:
    """Run the engine model on the reference workloads in virtual time and print predicted vs recorded."""
    from fleetgate.sim.calibrate import main as calibrate_main

    raise typer.Exit(calibrate_main(profile, fit))


@bench_app.callback()
def bench(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(help="Base URL of the OpenAI API, e.g. http://127.0.0.1:8000/v1.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name to request.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="OPENAI_API_KEY", help="Bearer key (default: $OPENAI_API_KEY).")
    ] = None,
    workload: Annotated[
        str, typer.Option(help="random, shared-prefix, multi-turn, sharegpt-like, tools or trace:FILE.")
    ] = "random",
    load: Annotated[
        str,
        typer.Option(help="concurrency=N, rate=R, poisson=R, sweep=rate:5,10,20 or sweep=concurrency:1,8."),
    ] = "concurrency=8",
    duration: Annotated[
        float | None, typer.Option(help="Seconds per load level (or use --num-requests).")
    ] = None,
    num_requests: Annotated[int | None, typer.Option(help="Requests per load level.")] = None,
    api: Annotated[str, typer.Option(help="chat, completions or responses.")] = "chat",
    seed: Annotated[int, typer.Option(help="Seed for prompts, lengths and Poisson arrivals.")] = 0,
    slo: Annotated[
        str, typer.Option(help="e.g. ttft=1s,tpot=50ms[,e2e=30s][,attainment=0.99]; exit 3 when not met.")
    ] = "",
    out: Annotated[Path, typer.Option(help="Directory for results.json and report.html.")] = Path(
        "bench-out"
    ),
    processes: Annotated[int, typer.Option(min=1, help="Load generator processes.")] = 2,
    warmup: Annotated[
        float, typer.Option(help="Seconds at the start of a level left out of the results.")
    ] = 0.0,
    cooldown: Annotated[
        float, typer.Option(help="Seconds at the end of a level left out of the results.")
    ] = 0.0,
    timeout: Annotated[float, typer.Option(help="Seconds one request may take.")] = 600.0,
    input_len: Annotated[
        str | None, typer.Option(help="Prompt tokens: 512, uniform:A:B, normal:M:SD, lognormal:M:S.")
    ] = None,
    output_len: Annotated[str | None, typer.Option(help="Output tokens, same forms as --input-len.")] = None,
    groups: Annotated[int | None, typer.Option(help="shared-prefix: number of prefix groups.")] = None,
    prompts_per_group: Annotated[int | None, typer.Option(help="shared-prefix: prompts per group.")] = None,
    system_len: Annotated[int | None, typer.Option(help="shared-prefix: system prompt tokens.")] = None,
    question_len: Annotated[int | None, typer.Option(help="shared-prefix: question tokens.")] = None,
    turns: Annotated[str | None, typer.Option(help="multi-turn: turns per session (a length spec).")] = None,
    sessions: Annotated[int | None, typer.Option(help="multi-turn: concurrent sessions.")] = None,
    token_ids: Annotated[
        bool, typer.Option(help="completions: send token-id prompts of exact length.")
    ] = False,
    language: Annotated[str | None, typer.Option(help="Prompt language: en, zh or mixed.")] = None,
    workload_file: Annotated[
        Path | None, typer.Option(help="YAML workload settings (flags override it).")
    ] = None,
    tenant: Annotated[
        list[str] | None,
        typer.Option(help="NAME:KEY[:PRIORITY[:WEIGHT]], repeatable: traffic split by weight."),
    ] = None,
    priority_header: Annotated[
        bool, typer.Option(help="Send x-fleetgate-priority with each tenant's priority.")
    ] = False,
    metrics_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="A vLLM-format /metrics read before and after for prefix-cache hits "
            "(default: the target's own; behind a gateway, a worker's).",
        ),
    ] = None,
) -> None:
    """Load-test an OpenAI-compatible endpoint (vLLM, fleetgate, anything speaking the API).

    Exit status: 0, or 2 for bad arguments, 3 when --slo is not met, 4 when every request failed."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    from fleetgate.bench.cli_support import build_run

    console = Console(emoji=False, highlight=False)
    if url is None or model is None:
        raise typer.BadParameter("--url and --model are required", param_hint="--url/--model")
    try:
        cfg, slo_spec = build_run(
            url=url, model=model, api_key=api_key, workload=workload, load=load, duration=duration,
            num_requests=num_requests, api=api, seed=seed, slo=slo, processes=processes, warmup=warmup,
            cooldown=cooldown, timeout=timeout, input_len=input_len, output_len=output_len, groups=groups,
            prompts_per_group=prompts_per_group, system_len=system_len, question_len=question_len,
            turns=turns, sessions=sessions, token_ids=token_ids, language=language,
            workload_file=workload_file,
            tenants=tenant or [], priority_header=priority_header,
        )  # fmt: skip
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    from fleetgate.bench.command import run

    raise typer.Exit(run(cfg, slo_spec, out, console, metrics_url))


@bench_app.command("compare")
def bench_compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (each with results.json).")],
    out: Annotated[Path, typer.Option(help="Directory for the comparison report.")] = Path("bench-compare"),
) -> None:
    """One report comparing several runs side by side."""
    from rich.console import Console

    from fleetgate.bench.command import compare

    try:
        compare(runs, out, Console(emoji=False))
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _serve_config(cfg: FleetConfig, *, progress: bool = True, exit_on_failure: bool = False) -> None:
    """Run until stopped. `exit_on_failure`: a pool of workers that failed ends the command (exit 1) with
    the reason, rather than serving 503s (the one-liner's behaviour; a fleet file's other pools serve on)."""
    from fleetgate.api.serve import PortInUseError, WorkersFailedError, run
    from fleetgate.routing.prompt import TokenizerError
    from fleetgate.tenancy.runtime import MissingExtraError

    def announce() -> None:
        typer.echo(f"fleetgate gateway on http://{cfg.listen.host}:{cfg.listen.port}/v1 "
                   f"(admin http://{cfg.admin.host}:{cfg.admin.port})")  # fmt: skip

    # Bars redraw in place: only where someone watches a terminal; plain log lines anywhere else.
    try:
        run(
            cfg, progress=progress and sys.stdout.isatty(), announce=announce, exit_on_failure=exit_on_failure
        )
    except (TokenizerError, PortInUseError, MissingExtraError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except WorkersFailedError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


@contextlib.contextmanager
def _config_errors() -> Iterator[None]:
    """A fleet file or flags that do not validate: every problem on stderr, exit status 2, no traceback."""
    from fleetgate.config import ConfigError

    try:
        yield
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


def _with_addresses(
    cfg: FleetConfig, host: str | None, port: int | None, admin_host: str | None, admin_port: int | None
) -> FleetConfig:
    with _config_errors():
        return cfg.with_addresses(host=host, port=port, admin_host=admin_host, admin_port=admin_port)


HostOpt = Annotated[str | None, typer.Option(help="Address to listen on (default 0.0.0.0).")]
PortOpt = Annotated[int | None, typer.Option(help="Port to listen on (default 8000, like vLLM).")]
AdminHostOpt = Annotated[str | None, typer.Option(help="Admin address (/metrics, /admin/fleet).")]
AdminPortOpt = Annotated[int | None, typer.Option(help="Admin port (default 8001).")]


@app.command("gateway")
def gateway(
    config: Annotated[
        Path | None, typer.Option(help="Fleet file (YAML; default $FLEETGATE_CONFIG, then ./fleet.yaml).")
    ] = None,
    upstream: Annotated[
        list[str] | None, typer.Option(help="Without a fleet file: an upstream base URL (repeatable).")
    ] = None,
    host: HostOpt = None,
    port: PortOpt = None,
    admin_host: AdminHostOpt = None,
    admin_port: AdminPortOpt = None,
) -> None:
    """The OpenAI-compatible gateway in front of a fleet of vLLM servers."""
    from fleetgate.config import config_from_upstreams, config_path, load_config

    with _config_errors():
        path = None if upstream else config_path(str(config) if config else None, os.environ)
        if config is not None and upstream:
            raise typer.BadParameter("give either --config or --upstream, not both")
        if path is not None:
            cfg = load_config(path)
        elif upstream:
            cfg = config_from_upstreams(upstream, host, port)
        else:
            raise typer.BadParameter(
                "give --config FILE (or FLEETGATE_CONFIG, or ./fleet.yaml) or --upstream URL"
            )
    _serve_config(_with_addresses(cfg, host, port, admin_host, admin_port))


@app.command("up")
def up(
    fleet: Annotated[Path, typer.Argument(help="The fleet file (YAML), pools of endpoints or of workers.")],
    host: HostOpt = None,
    port: PortOpt = None,
    admin_host: AdminHostOpt = None,
    admin_port: AdminPortOpt = None,
) -> None:
    """Gateway and workers in one command: starts the pools' workers, scales them, stops them on Ctrl-C.

    \b
    Example:
      fleetgate up examples/sim-fleet.yaml
    """
    from fleetgate.config import load_config

    with _config_errors():
        cfg = load_config(fleet)
    _serve_config(_with_addresses(cfg, host, port, admin_host, admin_port))


@app.command(
    "serve",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def serve(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Argument(
            help="Hub id or model directory; with --engine embedded also 'demo'; "
            "with --engine sim a simulator profile (see `fleetgate sim profiles`)."
        ),
    ],
    engine: Annotated[
        str, typer.Option(metavar="[vllm|embedded|sim]", help="The engine workers run.")
    ] = "vllm",
    served_model_name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Name clients use (default: MODEL).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="VLLM_API_KEY",
            metavar="KEY",
            help="Clients must send this key as a bearer token (as vLLM's --api-key).",
        ),
    ] = None,
    chat_template: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="Jinja chat template (a file, or the template itself), as vLLM's."),
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(metavar="LIST", help="GPUs the workers may use, e.g. 0,1.")
    ] = None,
    min_workers: Annotated[int, typer.Option(min=0, help="Workers kept when idle; 0 = scale to zero.")] = 1,
    max_workers: Annotated[int, typer.Option(min=1, help="Most workers.")] = 1,
    idle_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds without requests before an idle worker stops.")
    ] = 300.0,
    host: Annotated[str, typer.Option(help="Address the gateway listens on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port the gateway listens on.")] = 8000,
    admin_host: AdminHostOpt = None,
    admin_port: AdminPortOpt = None,
) -> None:
    """Serve one model behind the gateway, with workers started, scaled and stopped for you.

    The one-liner that replaces `vllm serve MODEL`. Engine flags go after --. A worker that cannot start
    for a reason a retry will not fix (no GPU, no vllm, a missing extra, a model not found, a flag the
    engine rejects) ends it with one line and exit status 1.

    \b
    Examples:
      fleetgate serve Qwen/Qwen2.5-7B-Instruct -- --max-model-len 8192
      fleetgate serve demo --engine embedded       (a tiny demo model, CPU)
      fleetgate serve h200-llama-3.1-8b --engine sim --min-workers 0
    """
    from fleetgate.config import config_for_model

    engine_args = list(ctx.args)
    if chat_template is not None:
        engine_args += ["--chat-template", chat_template]
    with _config_errors():
        cfg = config_for_model(
            model,
            engine=engine,
            served_model_name=served_model_name,
            engine_args=engine_args,
            gpus=None if gpus is None else [g.strip() for g in gpus.split(",") if g.strip()],
            min_workers=min_workers,
            max_workers=max_workers,
            idle_timeout=idle_timeout,
            api_key=api_key,
        )
    _serve_config(_with_addresses(cfg, host, port, admin_host, admin_port), exit_on_failure=True)


@app.command("status")
def status(
    admin: Annotated[
        str, typer.Option(metavar="URL", help="The gateway's admin address (host:port or URL).")
    ] = "http://127.0.0.1:8001",
) -> None:
    """Print the fleet: pools, their workers (state, startup phase, cold start) and endpoints."""
    from rich.console import Console

    from fleetgate.api.status import fetch_fleet, render_fleet

    try:
        fleet = fetch_fleet(admin)
    except OSError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    render_fleet(fleet, Console(emoji=False))


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="The fleet file to validate.")]) -> None:
    """Validate a fleet file; errors point at file:line:column and the key path."""
    from fleetgate.config import load_config

    with _config_errors():
        cfg = load_config(path)
    models = sum(len(p.models) for p in cfg.pools)
    endpoints = sum(len(p.endpoints) for p in cfg.pools)
    started = sum(p.workers is not None for p in cfg.pools)
    counts = [(len(cfg.pools), "pool", "pools"), (models, "model name", "model names"),
              (endpoints, "endpoint", "endpoints"),
              (started, "pool of started workers", "pools of started workers")]  # fmt: skip
    summary = ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts)
    typer.echo(f"{path}: ok ({summary})")


DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database", help="sqlite:///path or postgresql://... (default: --config's, then "
                 "$FLEETGATE_DATABASE)."),
]  # fmt: skip
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="A fleet file (its tenancy.database).")]


def _database(database: str | None, config: Path | None) -> str:
    from fleetgate.tenancy.commands import NoDatabaseError, database_url

    with _config_errors():
        try:
            return database_url(database, config)
        except NoDatabaseError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to (logs, limits, usage).")],
    name: Annotated[str, typer.Option(help="A name for this key (default: the tenant).")] = "",
    priority: Annotated[int, typer.Option(help="Higher is served first; < 0 = sheddable.")] = 0,
    model: Annotated[list[str] | None, typer.Option(help="Model it may use (repeatable).")] = None,
    pool: Annotated[list[str] | None, typer.Option(help="Pool it may use (repeatable).")] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Requests in flight at once.")] = None,
    budget: Annotated[float | None, typer.Option(help="Spend per window (see --budget-unit).")] = None,
    budget_unit: Annotated[str, typer.Option(help="tokens | usd.")] = "tokens",
    budget_window: Annotated[str, typer.Option(help="day | week | month | total.")] = "month",
    expires_in: Annotated[float | None, typer.Option(help="Seconds until the key stops working.")] = None,
    meta: Annotated[list[str] | None, typer.Option(help="KEY=VALUE metadata (repeatable).")] = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the key as JSON.")] = False,
) -> None:
    """Issue a key; its secret is printed once and never stored."""
    import orjson
    from pydantic import ValidationError

    from fleetgate.tenancy.commands import create_key
    from fleetgate.tenancy.requests import KeyRequest

    url = _database(database, config)
    try:
        request = KeyRequest.model_validate({
            "tenant": tenant, "name": name, "priority": priority, "models": model or [], "pools": pool or [],
            "rpm": rpm, "tpm": tpm, "concurrency": concurrency, "expires_in": expires_in,
            "budget": None if budget is None else
                      {"amount": budget, "unit": budget_unit, "window": budget_window},
            "metadata": dict(m.split("=", 1) for m in meta or [] if "=" in m),
        })  # fmt: skip
    except ValidationError as e:
        singular = {"models": "model", "pools": "pool", "metadata": "meta"}
        for err in e.errors(include_url=False):
            names = [singular.get(str(p), str(p)) for p in err["loc"]]
            flag = "--" + "-".join(names).replace("_", "-")  # the flag that set it
            typer.echo(f"error: {flag}: {err['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None
    record, secret = create_key(url, request)
    if json_out:
        typer.echo(orjson.dumps({**record.view(), "key": secret}).decode())
        return
    typer.echo(f"key {record.id} for tenant {record.tenant}:\n\n    {secret}\n\nshown once; store it now.")


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The issued keys (never their secrets)."""
    import orjson
    from rich.console import Console

    from fleetgate.tenancy.commands import list_keys, render_keys

    records = list_keys(_database(database, config), tenant, all_keys)
    if json_out:
        typer.echo(orjson.dumps([r.view() for r in records]).decode())
    else:
        render_keys(records, Console())


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")],
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Stop a key; running gateways refuse it within a second."""
    from fleetgate.tenancy.commands import revoke_key

    if not revoke_key(_database(database, config), key_id):
        typer.echo(f"error: no live key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")],
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A new secret for a key (same id, tenant and limits); the old secret stops working."""
    from fleetgate.tenancy.commands import rotate_key

    done = rotate_key(_database(database, config), key_id)
    if done is None:
        typer.echo(f"error: no live key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"key {key_id} rotated:\n\n    {done[1]}\n\nshown once; store it now.")


@app.command("usage")
def usage(
    since: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD, UTC).")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Usage per tenant, model and day from the ledger: requests, prompt (cached apart) and output tokens,
    cost, cache hits."""
    import orjson
    from rich.console import Console

    from fleetgate.tenancy.commands import render_usage, usage_report

    rows = usage_report(_database(database, config), since, tenant)
    if json_out:
        typer.echo(orjson.dumps(rows).decode())
    else:
        render_usage(rows, Console())


_METAVARS = {"int": "INTEGER", "float": "FLOAT"}


def _plain_metavars(command: Any) -> None:
    """Help pages name values as people do (TEXT, INTEGER, MODEL), not as Python types (`<list[str]>`)."""
    for param in command.params:
        if param.metavar is not None or getattr(param, "is_flag", False):
            continue
        if param.param_type_name == "argument":
            # Click's convention: MODEL in the usage line (typer writes {MODEL}), and no `<str>` after it.
            name = (param.name or "value").upper() + ("..." if param.nargs != 1 else "")
            param.metavar = name
            param._usage_display_name = lambda name=name: name
            param.display_type_rich = lambda ctx: None
            continue
        kind = param.type_descriptor
        if kind.is_choice:
            param.metavar = "[" + "|".join(str(c) for c in kind.choices or ()) + "]"
        elif kind.is_path:
            param.metavar = "PATH"
        else:
            param.metavar = _METAVARS.get(param.bare_type(), "TEXT")
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)


def command() -> Any:
    """The command tree as it runs (and as tests render its help): a click command."""
    cmd = typer.main.get_command(app)
    _plain_metavars(cmd)
    return cmd


def main() -> None:
    command()()


if __name__ == "__main__":  # pragma: no cover
    main()
