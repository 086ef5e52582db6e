"""Workloads: what `fleetgate bench` sends. A workload plans requests one at a time and hears their answers.

The runner builds one workload per worker process with `make_workload(settings, sizer, seed, worker,
workers)`: `seed` is the seed of the *run* (the same in every worker) and `worker` the worker's index.
Contents that must be the same in every worker (shared-prefix system prompts and questions) come from `seed`
alone; everything drawn per request (lengths, order, languages, tenants, sessions) comes from streams of
`(seed, worker)`, so workers differ and every worker is deterministic. `workers` shards a trace between
workers (line i goes to worker i % workers).

Bodies never carry `model` or `stream` (the runner adds them). `ignore_eos: true` is put in chat and
completions bodies when `settings.ignore_eos` is set (never in Responses bodies, nor next to a JSON schema,
whose grammar must be allowed to end). `RequestSpec.input_tokens` is the planned prompt size in the target's
tokens: for completions the prompt text itself; for chat and Responses the message contents plus an estimate
of the chat template (`TEMPLATE_TOKENS_PER_MESSAGE` per message and `TEMPLATE_TOKENS_REPLY` for the assistant
header; tools add their schemas and the preamble a Hermes-style template puts around them).
"""

from __future__ import annotations

from fleetgate.bench.workloads.base import (
    TEMPLATE_TOKENS_PER_MESSAGE,
    TEMPLATE_TOKENS_REPLY,
    TOOL_ROUND_TOKENS,
    TOOLS_PREAMBLE_TOKENS,
    Message,
    Prompt,
    Workload,
    chat_tokens,
)
from fleetgate.bench.workloads.lengths import MAX_LENGTH, length_dist
from fleetgate.bench.workloads.multi_turn import MultiTurnWorkload
from fleetgate.bench.workloads.registry import WORKLOADS, make_workload
from fleetgate.bench.workloads.settings import Kind, Language, Tenant, WorkloadConfigError, WorkloadSettings
from fleetgate.bench.workloads.shared_prefix import SharedPrefixWorkload
from fleetgate.bench.workloads.single import (
    SHAREGPT_INPUT,
    SHAREGPT_OUTPUT,
    RandomWorkload,
    ShareGPTLikeWorkload,
)
from fleetgate.bench.workloads.tools import (
    BOOK_HOTEL,
    PLAN_ITINERARY,
    SEARCH_SEGMENTS,
    TRIP_SCHEMA,
    ToolsWorkload,
)
from fleetgate.bench.workloads.trace import TraceLine, TraceWorkload, read_trace

__all__ = [
    "BOOK_HOTEL",
    "MAX_LENGTH",
    "PLAN_ITINERARY",
    "SEARCH_SEGMENTS",
    "SHAREGPT_INPUT",
    "SHAREGPT_OUTPUT",
    "TEMPLATE_TOKENS_PER_MESSAGE",
    "TEMPLATE_TOKENS_REPLY",
    "TOOLS_PREAMBLE_TOKENS",
    "TOOL_ROUND_TOKENS",
    "TRIP_SCHEMA",
    "WORKLOADS",
    "Kind",
    "Language",
    "Message",
    "MultiTurnWorkload",
    "Prompt",
    "RandomWorkload",
    "ShareGPTLikeWorkload",
    "SharedPrefixWorkload",
    "Tenant",
    "ToolsWorkload",
    "TraceLine",
    "TraceWorkload",
    "Workload",
    "WorkloadConfigError",
    "WorkloadSettings",
    "chat_tokens",
    "length_dist",
    "make_workload",
    "read_trace",
]
