"""From `fleetgate bench` flags to a run configuration, with errors that name the flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fleetgate.bench.load import Level, parse_load
from fleetgate.bench.runner import RunConfig
from fleetgate.bench.stats import SLO
from fleetgate.bench.workloads import Tenant, WorkloadSettings, length_dist


def parse_tenant(text: str) -> Tenant:
    """`NAME:KEY[:PRIORITY[:WEIGHT]]`; an empty KEY means no key."""
    parts = text.split(":")
    if len(parts) < 2 or not parts[0]:
        raise ValueError(f"--tenant: expected NAME:KEY[:PRIORITY[:WEIGHT]], got {text!r}")
    try:
        priority = int(parts[2]) if len(parts) > 2 and parts[2] else None
        weight = float(parts[3]) if len(parts) > 3 and parts[3] else 1.0
    except ValueError:
        raise ValueError(f"--tenant {text!r}: PRIORITY must be an integer and WEIGHT a number") from None
    return Tenant(name=parts[0], api_key=parts[1] or None, priority=priority, weight=weight)


def build_run(
    *,
    url: str,
    model: str,
    api_key: str | None,
    workload: str,
    load: str,
    duration: float | None,
    num_requests: int | None,
    api: str,
    seed: int,
    slo: str,
    processes: int,
    warmup: float,
    cooldown: float,
    timeout: float,
    input_len: str | None,
    output_len: str | None,
    groups: int | None,
    prompts_per_group: int | None,
    system_len: int | None,
    question_len: int | None,
    turns: str | None,
    sessions: int | None,
    token_ids: bool,
    language: str | None,
    workload_file: Path | None,
    tenants: list[str],
    priority_header: bool,
) -> tuple[RunConfig, SLO]:
    kind, _, trace = workload.partition(":")
    if kind != "trace" and (duration is None) == (num_requests is None):
        raise ValueError("give exactly one of --duration and --num-requests")
    if duration is not None and warmup + cooldown >= duration:
        raise ValueError("--warmup plus --cooldown must be shorter than --duration")
    base: dict[str, Any] = (
        WorkloadSettings.from_file(workload_file).model_dump() if workload_file is not None else {}
    )
    overrides: dict[str, Any] = {
        "kind": kind,
        "api": api,
        "input_len": input_len,
        "output_len": output_len,
        "groups": groups,
        "prompts_per_group": prompts_per_group,
        "system_len": system_len,
        "question_len": question_len,
        "turns": turns,
        "sessions": sessions,
        "language": language,
        "trace_file": trace or None,
    }
    if token_ids:
        overrides["token_ids"] = True
    if tenants:
        overrides["tenants"] = [parse_tenant(t) for t in tenants]
    settings_data = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        settings = WorkloadSettings.model_validate(settings_data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"workload setting {where}: {first['msg']}") from None
    for spec in (settings.input_len, settings.output_len):
        length_dist(spec)
    levels: list[Level] = [Level("trace", 0.0)] if kind == "trace" else parse_load(load)
    if kind == "trace" and not trace:
        raise ValueError("--workload trace needs a file: trace:FILE.jsonl")
    cfg = RunConfig(
        url=url.rstrip("/"),
        model=model,
        workload=settings,
        levels=levels,
        duration=duration,
        num_requests=num_requests,
        seed=seed,
        processes=processes,
        warmup=warmup,
        cooldown=cooldown,
        timeout=timeout,
        api_key=api_key,
        priority_header=priority_header,
    )
    return cfg, SLO.parse(slo)
