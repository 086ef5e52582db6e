"""What flows through the load tester: requests a workload plans and what the client measured of each."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Api = Literal["chat", "completions", "responses"]


@dataclass(slots=True)
class RequestSpec:
    """One request a workload wants sent. `body` lacks `model` and `stream`, which the runner sets."""

    api: Api
    body: dict[str, Any]
    input_tokens: int  # prompt size in the target's tokens, as planned
    max_tokens: int
    tenant: str | None = None
    priority: int | None = None
    session: str | None = None  # multi-turn: requests of one session go in order, each after the last
    turn: int = 0
    at: float | None = None  # trace replay: seconds from the start


@dataclass(slots=True)
class RequestRecord:
    """Timings (seconds, monotonic clock) and outcome of one request, as measured at the client."""

    index: int
    api: str
    tenant: str | None
    priority: int | None
    scheduled: float  # when the schedule wanted it sent, relative to the run start
    sent: float  # when it was sent, relative to the run start
    status: int = 0  # HTTP status; 0 = no response (connection error, timeout)
    error: str | None = None  # error type: OpenAI `type`, "connect", "timeout", "stream_error", ...
    error_message: str | None = None
    ttft: float | None = None  # to the first chunk carrying content, a tool call or reasoning
    e2e: float | None = None
    prompt_tokens: int = 0  # from the usage chunk
    completion_tokens: int = 0
    chunks: int = 0  # chunks that carried tokens
    itl: list[float] = field(default_factory=list)  # per-token gaps after the first token
    planned_input_tokens: int = 0
    planned_output_tokens: int = 0
    level: int = 0  # index of the load level in a sweep
    session: str | None = None  # multi-turn conversation this request belongs to
    turn: int = 0
    excluded: bool = False  # in a warm-up or cool-down window

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def lag(self) -> float:
        return self.sent - self.scheduled

    @property
    def tpot(self) -> float | None:
        if self.e2e is None or self.ttft is None or self.completion_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.completion_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["tpot"] = self.tpot
        out["lag"] = self.lag
        return out
