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

import math
import os
import random
import re
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetgate.bench.records import Api, RequestSpec
from fleetgate.bench.sizing import Sizer

TEMPLATE_TOKENS_PER_MESSAGE = (
    5  # ChatML: <|im_start|> role \n ... <|im_end|> \n (Llama 3 headers: also about 5)
)
TEMPLATE_TOKENS_REPLY = (
    4  # <|im_start|> assistant \n (Llama 3: <|start_header_id|> assistant <|end_header_id|> \n\n)
)
TOOLS_PREAMBLE_TOKENS = 125  # Hermes-style "# Tools ... <tools></tools> ... <tool_call>" around the schemas
TOOL_ROUND_TOKENS = (
    44  # <tool_call>{"name": ..., "arguments": ...}</tool_call> and <tool_response></tool_response>
)
MAX_LENGTH = 10_000_000  # no length spec yields more tokens than this

Kind = Literal["random", "shared-prefix", "multi-turn", "sharegpt-like", "tools", "trace"]
Language = Literal["en", "zh", "mixed"]
Prompt = str | list[int]
Message = dict[str, Any]


def _words(text: str) -> list[str]:
    return text.split()


# ---- length distributions ---------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_FORMS = (
    "N (fixed), uniform:LO:HI, normal:MEAN:SD[:MAX], lognormal:MEDIAN:SIGMA[:MAX], zipf:S:MAX "
    f"(token counts are >= 1 and <= {MAX_LENGTH})"
)


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"bad length spec {spec!r}: {why}; expected {_FORMS}")


def _int_arg(spec: str, name: str, raw: str) -> int:
    if not _INT.fullmatch(raw):
        raise _bad(spec, f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    if not 1 <= value <= MAX_LENGTH:
        raise _bad(spec, f"{name} must be between 1 and {MAX_LENGTH}, got {value}")
    return value


def _float_arg(spec: str, name: str, raw: str, *, positive: bool) -> float:
    if not _FLOAT.fullmatch(raw):
        raise _bad(spec, f"{name} must be a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value) or value < 0 or (positive and value == 0) or value > MAX_LENGTH:
        bound = "> 0" if positive else ">= 0"
        raise _bad(spec, f"{name} must be {bound} and <= {MAX_LENGTH}, got {raw}")
    return value


def length_dist(spec: str) -> Callable[[random.Random], int]:
    """A sampler of token counts from a spec; every draw is an int in [1, MAX_LENGTH] (or the spec's MAX).

    `512` fixed; `uniform:LO:HI` integers LO..HI inclusive; `normal:MEAN:SD[:MAX]` rounded and clamped to [1,
    MAX]; `lognormal:MEDIAN:SIGMA[:MAX]` MEDIAN * exp(SIGMA * N(0, 1)), rounded and clamped likewise;
    `zipf:S:MAX` k in 1..MAX with probability proportional to k^-S. Raises ValueError naming the spec.
    """
    if not isinstance(spec, str):
        raise ValueError(f"bad length spec {spec!r}: expected a string of the form {_FORMS}")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    args = [a.strip() for a in rest.split(":")] if rest else []
    if not rest and _INT.fullmatch(kind):
        value = _int_arg(spec, "the length", kind)
        return lambda rng: value
    if kind == "uniform":
        if len(args) != 2:
            raise _bad(spec, "uniform takes LO:HI")
        lo, hi = _int_arg(spec, "LO", args[0]), _int_arg(spec, "HI", args[1])
        if lo > hi:
            raise _bad(spec, f"LO ({lo}) is above HI ({hi})")
        return lambda rng: rng.randint(lo, hi)
    if kind in ("normal", "lognormal"):
        if len(args) not in (2, 3):
            first = "MEAN" if kind == "normal" else "MEDIAN"
            raise _bad(spec, f"{kind} takes {first}:{'SD' if kind == 'normal' else 'SIGMA'}[:MAX]")
        center = _float_arg(spec, "MEAN" if kind == "normal" else "MEDIAN", args[0], positive=True)
        spread = _float_arg(spec, "SD" if kind == "normal" else "SIGMA", args[1], positive=False)
        cap = _int_arg(spec, "MAX", args[2]) if len(args) == 3 else MAX_LENGTH
        if kind == "normal":

            def normal(rng: random.Random) -> int:
                return min(max(round(rng.gauss(center, spread)), 1), cap)

            return normal
        log_center, log_cap = math.log(center), math.log(cap)

        def lognormal(rng: random.Random) -> int:
            exponent = log_center + spread * rng.gauss(0.0, 1.0)
            return cap if exponent >= log_cap else max(round(math.exp(exponent)), 1)

        return lognormal
    if kind == "zipf":
        if len(args) != 2:
            raise _bad(spec, "zipf takes S:MAX")
        s = _float_arg(spec, "S", args[0], positive=True)
        top = _int_arg(spec, "MAX", args[1])
        if top > 1_000_000:
            raise _bad(spec, f"zipf MAX must be <= 1000000, got {top}")
        cum = list(accumulate(k**-s for k in range(1, top + 1)))
        total = cum[-1]

        def zipf(rng: random.Random) -> int:
            return min(bisect_right(cum, rng.random() * total) + 1, top)

        return zipf
    raise _bad(spec, f"unknown kind {kind!r}" if rest or kind else "empty")


# ---- settings ---------------------------------------------------------------------------------------------


class WorkloadConfigError(ValueError):
    """A workload file or mapping that does not validate; the message names the source and the key path."""


class Tenant(BaseModel):
    """A tenant the load is split between; the runner sends its `api_key` (found by `RequestSpec.tenant`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Name reported on each request (RequestSpec.tenant).")
    api_key: str | None = Field(default=None, description="Bearer key the runner sends for this tenant.")
    priority: int | None = Field(
        default=None, description="Priority reported on each request of this tenant."
    )
    weight: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="Share of requests, relative.")


class WorkloadSettings(BaseModel):
    """What to send: the kind of workload and its shape. Every field has a default; sizes in target tokens."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field(
        default="random",
        description="random | shared-prefix | multi-turn | sharegpt-like | tools | trace.",
    )
    api: Api = Field(default="chat", description="chat (/v1/chat/completions), completions, responses.")
    input_len: str = Field(
        default="512",
        description=(
            "Prompt tokens (distribution; see length_dist) of random and of multi-turn's first turn; "
            "sharegpt-like uses it only when set; shared-prefix, tools and trace ignore it."
        ),
    )
    output_len: str = Field(default="128", description="max_tokens distribution.")
    groups: int = Field(default=10, ge=1, description="shared-prefix: groups, one system prompt each.")
    prompts_per_group: int = Field(
        default=10, ge=1, description="shared-prefix: distinct questions per group."
    )
    system_len: int = Field(default=2000, ge=0, description="shared-prefix: system prompt tokens.")
    question_len: int = Field(default=200, ge=1, description="shared-prefix: question tokens.")
    turns: str = Field(default="uniform:3:8", description="multi-turn: turns per session (distribution).")
    sessions: int = Field(default=100, ge=1, description="multi-turn: conversations kept open at once.")
    turn_input_len: str = Field(
        default="normal:150:50", description="multi-turn: tokens of each user message after the first."
    )
    token_ids: bool = Field(
        default=False,
        description="completions only: token-id prompts of exact length (no /tokenize calibration needed).",
    )
    language: Language = Field(
        default="en",
        description=(
            "Prompt language: en, zh, or mixed (half each: per prompt, per group for shared-prefix, per "
            "session for multi-turn)."
        ),
    )
    ignore_eos: bool = Field(
        default=True, description="Send vLLM's ignore_eos so output lengths are as planned."
    )
    trace_file: str | None = Field(default=None, description="trace: JSONL file to replay.")
    tenants: list[Tenant] = Field(
        default_factory=list, description="Tenants drawn per request by weight; empty = no tenant."
    )

    @field_validator("input_len", "output_len", "turns", "turn_input_len")
    @classmethod
    def _length_spec(cls, value: str) -> str:
        length_dist(value)
        return value

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: list[Tenant]) -> list[Tenant]:
        names = [t.name for t in tenants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tenant names must be unique, repeated: {', '.join(duplicates)}")
        if tenants and not sum(t.weight for t in tenants) > 0:
            raise ValueError("at least one tenant needs a weight above 0")
        return tenants

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadSettings:
        problem = _inconsistency(self)
        if problem:
            raise ValueError(problem)
        return self

    @classmethod
    def from_mapping(cls, data: Any, source: str = "workload") -> WorkloadSettings:
        """Validates a mapping (a YAML document or a section of one); errors read `source: key.path: why`."""
        if not isinstance(data, Mapping):
            raise WorkloadConfigError(
                f"{source}: expected a mapping of workload settings, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
                message = str(err["msg"]).removeprefix("Value error, ")
                lines.append(f"{source}: {path}: {message}" if path else f"{source}: {message}")
            raise WorkloadConfigError("\n".join(lines)) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WorkloadSettings:
        """Reads a YAML file; a relative `trace_file` is taken relative to the file's folder."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkloadConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise WorkloadConfigError(f"{file}: not valid YAML: {exc}") from None
        settings = cls.from_mapping({} if data is None else data, str(file))
        if settings.trace_file and not Path(settings.trace_file).is_absolute():
            settings = settings.model_copy(update={"trace_file": str(file.parent / settings.trace_file)})
        return settings


def _inconsistency(s: WorkloadSettings) -> str | None:
    if s.kind == "trace" and not s.trace_file:
        return "trace_file: the trace workload needs a trace_file"
    if s.kind == "tools" and s.api != "chat":
        return f"api: the tools workload sends chat requests only (api: chat), got {s.api}"
    if s.token_ids and s.api != "completions":
        return f"token_ids: token-id prompts need api: completions, got {s.api}"
    if s.token_ids and s.kind == "multi-turn":
        return "token_ids: multi-turn sends the answers' text back, so it cannot use token-id prompts"
    return None


# ---- the protocol and shared parts ------------------------------------------------------------------------


class Workload(Protocol):
    """Plans requests one at a time (`next_request` never blocks) and hears back their answers."""

    name: str
    needs_text: bool  # on_response needs the answer's text (multi-turn); else the runner may pass None

    def next_request(self) -> RequestSpec: ...

    def on_response(self, spec: RequestSpec, text: str | None) -> None: ...


def chat_tokens(content_tokens: int, messages: int) -> int:
    """Planned prompt tokens of a chat request: contents plus the template estimate."""
    return content_tokens + messages * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_REPLY


class _TenantPicker:
    def __init__(self, tenants: Sequence[Tenant], rng: random.Random) -> None:
        self._tenants = list(tenants)
        self._cum = list(accumulate(t.weight for t in tenants))
        self._rng = rng
        self._by_name = {t.name: t for t in tenants}

    def pick(self) -> tuple[str | None, int | None]:
        if not self._tenants:
            return None, None
        x = self._rng.random() * self._cum[-1]
        tenant = self._tenants[min(bisect_right(self._cum, x), len(self._tenants) - 1)]
        return tenant.name, tenant.priority

    def named(self, name: str) -> tuple[str, int | None]:
        tenant = self._by_name.get(name)
        return name, tenant.priority if tenant else None


def _stream(seed: int, *parts: object) -> random.Random:
    # String seeds are hashed with SHA-512, identically in every process.
    return random.Random(":".join(["fleetgate-bench", str(seed), *map(str, parts)]))


class _Base:
    name = "base"
    needs_text = False

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        self.settings = settings
        self.sizer = sizer
        self.seed = seed
        self.worker = worker
        self.rng = _stream(seed, worker, self.name)
        self.tenants = _TenantPicker(settings.tenants, _stream(seed, worker, "tenants"))
        self.output_len = length_dist(settings.output_len)
        self.count = 0  # requests planned

    def on_response(self, spec: RequestSpec, text: str | None) -> None:
        return None

    def language(self, rng: random.Random) -> Literal["en", "zh"]:
        lang = self.settings.language
        if lang == "mixed":
            return "zh" if rng.random() < 0.5 else "en"
        return lang

    def make_text(self, tokens: int, rng: random.Random, lang: Literal["en", "zh"]) -> str:
        return self.sizer.text_zh(tokens, rng) if lang == "zh" else self.sizer.text(tokens, rng)

    def prompt(self, tokens: int, rng: random.Random) -> Prompt:
        if self.settings.token_ids:
            return self.sizer.ids(tokens, rng)
        return self.make_text(tokens, rng, self.language(rng))

    def finish(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.settings.ignore_eos and self.settings.api != "responses":
            body["ignore_eos"] = True
        return body

    def prompt_body(self, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
        """The body for one user prompt (text, or ids for completions)."""
        api = self.settings.api
        if api == "chat":
            return self.finish({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
        if api == "completions":
            return self.finish({"prompt": prompt, "max_tokens": max_tokens})
        return {"input": prompt, "max_output_tokens": max_tokens}

    def messages_body(self, messages: list[Message], max_tokens: int) -> dict[str, Any]:
        """The body for a list of chat messages; completions get them as one transcript."""
        api = self.settings.api
        if api == "chat":
            return self.finish({"messages": messages, "max_tokens": max_tokens})
        if api == "completions":
            return self.finish({"prompt": _transcript(messages), "max_tokens": max_tokens})
        return {"input": messages, "max_output_tokens": max_tokens}

    def spec(self, body: dict[str, Any], input_tokens: int, max_tokens: int, **extra: Any) -> RequestSpec:
        tenant, priority = self.tenants.pick()
        self.count += 1
        return RequestSpec(
            api=self.settings.api,
            body=body,
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            tenant=tenant,
            priority=priority,
            **extra,
        )

    def single(self, prompt: Prompt, tokens: int, max_tokens: int) -> RequestSpec:
        """One user prompt of `tokens` planned target tokens."""
        planned = tokens if self.settings.api == "completions" else chat_tokens(tokens, 1)
        return self.spec(self.prompt_body(prompt, max_tokens), planned, max_tokens)

    def next_request(self) -> RequestSpec:
        raise NotImplementedError


def _transcript(messages: Sequence[Message]) -> str:
    """A conversation as one completions prompt: `User: ...` and `Assistant: ...` turns, then `Assistant:`."""
    parts = [f"{'Assistant' if m['role'] == 'assistant' else 'User'}: {m['content']}" for m in messages]
    parts.append("Assistant:")
    return "\n\n".join(parts)


# ---- random and sharegpt-like -----------------------------------------------------------------------------


class RandomWorkload(_Base):
    """Single prompts with input and output lengths drawn from `input_len` and `output_len`; for chat and
    Responses the input length includes the chat template, so `usage.prompt_tokens` matches it."""

    name = "random"

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        super().__init__(settings, sizer, seed, worker)
        self.input_len = length_dist(settings.input_len)

    def next_request(self) -> RequestSpec:
        rng = self.rng
        tokens = self.input_len(rng)
        max_tokens = self.output_len(rng)
        # input_len is the whole prompt as the server counts it (usage.prompt_tokens), template included.
        if self.settings.api != "completions":
            tokens = max(1, tokens - TEMPLATE_TOKENS_PER_MESSAGE - TEMPLATE_TOKENS_REPLY)
        return self.single(self.prompt(tokens, rng), tokens, max_tokens)


SHAREGPT_INPUT = "lognormal:220:1.0:4096"
SHAREGPT_OUTPUT = "lognormal:200:0.9:2048"


class ShareGPTLikeWorkload(RandomWorkload):
    """Single prompts whose lengths follow a ShareGPT-like mix, generated locally (no dataset is downloaded).

    Input lengths are lognormal with median 220 tokens and sigma 1.0, capped at 4096; outputs lognormal with
    median 200 and sigma 0.9, capped at 2048 (`SHAREGPT_INPUT`, `SHAREGPT_OUTPUT`). These parameters are an
    approximation of published length statistics of ShareGPT V3 (the ShareGPT_V3_unfiltered_cleaned_split set
    that vLLM's serving benchmark samples): heavy-tailed, lognormal-like prompt and answer lengths of a few
    hundred tokens at the median. They were not fitted to the dataset here. An `input_len` or `output_len`
    other than the settings' default ("512", "128") replaces the corresponding distribution.
    """

    name = "sharegpt-like"

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        # Compared with the defaults rather than model_fields_set, which a dump and re-validation loses.
        fields = WorkloadSettings.model_fields
        overrides = {
            key: mix
            for key, mix in (("input_len", SHAREGPT_INPUT), ("output_len", SHAREGPT_OUTPUT))
            if getattr(settings, key) == fields[key].default
        }
        super().__init__(settings.model_copy(update=overrides), sizer, seed, worker)


# ---- shared-prefix ----------------------------------------------------------------------------------------


class SharedPrefixWorkload(_Base):
    """`groups` x `prompts_per_group` prompts: a group's system prompt plus one of its distinct questions.

    The shape of llm-d's and inference-perf's shared-prefix benchmark. System prompts and questions depend on
    the run `seed` and their indices only, so every worker sends the same prompts (and prefix caches see them
    as one set). Each worker cycles through all prompts in its own random order: each pass of groups x
    prompts_per_group requests sends every prompt once. Chat: a system message and a user message;
    completions: system text, a blank line, the question (with token_ids: a shared id prefix per group, then
    the question's ids); responses: the two messages as `input`.
    """

    name = "shared-prefix"

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        super().__init__(settings, sizer, seed, worker)
        self._systems: dict[int, Prompt] = {}
        self._questions: dict[tuple[int, int], Prompt] = {}
        self._order: list[tuple[int, int]] = []

    def system(self, group: int) -> Prompt:
        found = self._systems.get(group)
        if found is None:
            rng = _stream(self.seed, "group", group)
            tokens = self.settings.system_len
            if self.settings.token_ids:
                found = self.sizer.ids(tokens, rng)
            else:
                found = self.make_text(tokens, rng, self.language(rng))
            self._systems[group] = found
        return found

    def question(self, group: int, index: int) -> Prompt:
        found = self._questions.get((group, index))
        if found is None:
            rng = _stream(self.seed, "group", group, "question", index)
            tokens = self.settings.question_len
            if self.settings.token_ids:
                found = self.sizer.ids(tokens, rng)
            else:
                lang = self.language(_stream(self.seed, "group", group))  # the group's language
                found = self.make_text(tokens, rng, lang)
            self._questions[(group, index)] = found
        return found

    def next_request(self) -> RequestSpec:
        s = self.settings
        if not self._order:
            self._order = [(g, p) for g in range(s.groups) for p in range(s.prompts_per_group)]
            self.rng.shuffle(self._order)
            self._order.reverse()  # popped from the end
        group, index = self._order.pop()
        system, question = self.system(group), self.question(group, index)
        max_tokens = self.output_len(self.rng)
        content = s.system_len + s.question_len
        if s.api == "completions":
            if isinstance(system, list) and isinstance(question, list):
                return self.spec(self.prompt_body(system + question, max_tokens), content, max_tokens)
            prompt = f"{system}\n\n{question}" if system else str(question)
            return self.spec(self.prompt_body(prompt, max_tokens), content + (1 if system else 0), max_tokens)
        messages: list[Message] = [{"role": "user", "content": question}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        planned = chat_tokens(content, len(messages))
        return self.spec(self.messages_body(messages, max_tokens), planned, max_tokens)


# ---- multi-turn -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    id: str
    rng: random.Random
    turns: int
    lang: Literal["en", "zh"]
    messages: list[Message] = field(default_factory=list)
    content_tokens: int = 0
    turn: int = 0
    busy: bool = False


class MultiTurnWorkload(_Base):
    """Conversations: each turn sends the whole history; the next turn waits for the answer to this one.

    Keeps a pool of up to `sessions` open conversations. `next_request` starts a new session while the pool
    has room, otherwise sends the next turn of an idle session (one whose last answer came back through
    `on_response`; a random one of them). When every session is busy and the pool is full it starts an extra
    session anyway, so it never blocks; `extra_sessions` counts those (a sign the offered rate exceeds what
    `sessions` conversations can carry). The first user message has `input_len` tokens, later ones
    `turn_input_len`; a session has `turns` turns (drawn per session) and then ends, freeing its place. A
    failed turn (`text` None) ends its session. Session ids are `w<worker>-<n>`; `RequestSpec.turn` counts
    from 0. Each request carries a copy of the history, so earlier specs never change.
    """

    name = "multi-turn"
    needs_text = True

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        super().__init__(settings, sizer, seed, worker)
        self.first_len = length_dist(settings.input_len)
        self.turn_len = length_dist(settings.turn_input_len)
        self.turns_dist = length_dist(settings.turns)
        self.active: dict[str, _Session] = {}
        self._idle: list[_Session] = []
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.extra_sessions = 0

    def _new_session(self) -> _Session:
        n = self.started
        self.started += 1
        rng = _stream(self.seed, self.worker, "session", n)
        session = _Session(
            id=f"w{self.worker}-{n}", rng=rng, turns=self.turns_dist(rng), lang=self.language(rng)
        )
        self.active[session.id] = session
        return session

    def next_request(self) -> RequestSpec:
        if len(self.active) < self.settings.sessions:
            session = self._new_session()
        elif self._idle:
            idle = self._idle
            k = self.rng.randrange(len(idle))
            idle[k], idle[-1] = idle[-1], idle[k]
            session = idle.pop()
        else:
            self.extra_sessions += 1
            session = self._new_session()
        rng = session.rng
        tokens = (self.first_len if session.turn == 0 else self.turn_len)(rng)
        session.messages.append({"role": "user", "content": self.make_text(tokens, rng, session.lang)})
        session.content_tokens += tokens
        session.busy = True
        max_tokens = self.output_len(rng)
        messages = list(session.messages)
        if self.settings.api == "completions":
            planned = session.content_tokens + 3 * len(messages) + 2  # "User:", "\n\n" each, "Assistant:"
        else:
            planned = chat_tokens(session.content_tokens, len(messages))
        return self.spec(
            self.messages_body(messages, max_tokens),
            planned,
            max_tokens,
            session=session.id,
            turn=session.turn,
        )

    def on_response(self, spec: RequestSpec, text: str | None) -> None:
        session = self.active.get(spec.session or "")
        if session is None or not session.busy or spec.turn != session.turn:
            return  # not ours, or stale
        session.busy = False
        if text is None:
            self.failed += 1
            del self.active[session.id]
            return
        session.messages.append({"role": "assistant", "content": text})
        session.content_tokens += self.sizer.count(text)
        session.turn += 1
        if session.turn >= session.turns:
            self.finished += 1
            del self.active[session.id]
        else:
            self._idle.append(session)


# ---- tools ------------------------------------------------------------------------------------------------

SEARCH_SEGMENTS: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search_segments",
        "description": "Search the travel video library for segments about a topic in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for, e.g. 'night market food'."},
                "city": {"type": "string", "description": "City name, e.g. 'Chengdu'."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50, "description": "Most results."},
            },
            "required": ["query", "city"],
        },
    },
}
PLAN_ITINERARY: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "plan_itinerary",
        "description": "Arrange video segments (by id) into a day-by-day itinerary.",
        "parameters": {
            "type": "object",
            "properties": {
                "segments": {"type": "array", "items": {"type": "integer"}, "description": "Segment ids."},
                "days": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 30,
                    "description": "Trip length in days.",
                },
            },
            "required": ["segments", "days"],
        },
    },
}
BOOK_HOTEL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "book_hotel",
        "description": "Book a hotel room.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "check_in": {"type": "string", "format": "date", "description": "YYYY-MM-DD"},
                "nights": {"type": "integer", "minimum": 1},
                "guests": {"type": "integer", "minimum": 1, "default": 2},
                "max_price": {"type": "number", "description": "Per night, in the local currency."},
            },
            "required": ["city", "check_in", "nights"],
        },
    },
}
TRIP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1},
        "stops": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "day": {"type": "integer", "minimum": 1},
                    "name": {"type": "string"},
                    "segment_id": {"type": "integer"},
                },
                "required": ["day", "name"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["city", "days", "stops"],
    "additionalProperties": False,
}

_SYSTEM = {
    "en": "You are the travel assistant of a video travel guide. Use the tools to find video segments, plan "
    "itineraries and book hotels. Keep answers short and practical.",
    "zh": "你是一个旅游视频指南的旅行助手。请使用工具查找视频片段、规划行程和预订酒店。回答要简洁实用。",
}
_CITIES = {
    "en": _words(
        "Chengdu Xi'an Hangzhou Guilin Xiamen Lijiang Chongqing Kyoto Osaka Taipei Hanoi Bangkok Lisbon Rome"
    ),
    "zh": _words("成都 西安 杭州 桂林 厦门 丽江 重庆 京都 大阪 台北 河内 曼谷 里斯本 罗马"),
}
_TOPICS = {
    "en": ["night markets", "street food", "temples", "old towns", "hiking trails", "museums", "tea houses"],
    "zh": ["夜市", "街头小吃", "寺庙", "古镇", "徒步路线", "博物馆", "茶馆"],
}
_WHO = {
    "en": ["my parents", "two kids", "friends", "my partner"],
    "zh": ["父母", "两个孩子", "朋友", "另一半"],
}
_ASKS = {
    "en": [
        "Find short videos about {topic} in {city} and plan a {days}-day trip around them.",
        "I am going to {city} for {days} days with {who}. Which {topic} should we see?",
        "Show me video clips of {topic} in {city}.",
        "Plan {days} days in {city} focused on {topic}, and book a hotel for {who} from {date}.",
        "Book a hotel in {city} for {days} nights from {date}, under {price} per night.",
    ],
    "zh": [
        "帮我找一些{city}{topic}的短视频，并围绕它们安排一个{days}天的行程。",
        "我要和{who}去{city}玩{days}天，有哪些{topic}值得看？",
        "给我看看{city}{topic}的视频片段。",
        "规划{city}{days}天的行程，主要看{topic}，再帮{who}订一家{date}入住的酒店。",
        "帮我在{city}订{days}晚的酒店，{date}入住，每晚不超过{price}元。",
    ],
}
_JSON_ASK = {
    "en": "Plan a {days}-day trip to {city} for {who}, around {topic}. Reply only with JSON: city, days, and "
    "stops (day, name, segment_id).",
    "zh": "为{who}规划一个{days}天的{city}行程，围绕{topic}。"
    "只用JSON回答：city、days和stops（day、name、segment_id）。",
}


@dataclass(slots=True, frozen=True)
class _ToolPools:
    """Prompts of one language made once (with their token counts), so requests only pick from them."""

    asks: list[tuple[str, int, bool]]  # text, tokens, mentions hotels
    json_asks: list[tuple[str, int]]
    rounds: list[tuple[Message, Message, int]]  # assistant tool call, tool result, tokens of both


class ToolsWorkload(_Base):
    """Travel-assistant chat requests with function tools (chat API only).

    Each request has the assistant's system message and a user message (en or zh by `language`) asking for
    trip videos, itineraries or hotels, with 2-3 tools (search_segments, plan_itinerary, and book_hotel when
    hotels come up) and `tool_choice: auto`. Every 3rd request instead asks for JSON output with
    `response_format: json_schema` (schema "trip", no tools, no ignore_eos). About 40% of the tool requests
    are follow-ups: the assistant's search_segments call and its tool result are already in the history.
    User messages and tool rounds come from pools made once per language from the run seed (the same in
    every worker). `input_len` is not used; `input_tokens` is estimated from the contents, the tool schemas,
    the preamble a Hermes-style template wraps them in (`TOOLS_PREAMBLE_TOKENS`) and the template.
    """

    name = "tools"
    POOL = 256

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        if settings.api != "chat":
            raise ValueError(f"the tools workload sends chat requests only (api: chat), got {settings.api}")
        super().__init__(settings, sizer, seed, worker)
        self._tools = {2: [SEARCH_SEGMENTS, PLAN_ITINERARY], 3: [SEARCH_SEGMENTS, PLAN_ITINERARY, BOOK_HOTEL]}
        self._tools_tokens = {
            n: TOOLS_PREAMBLE_TOKENS + sum(sizer.count(orjson.dumps(t).decode()) for t in tools)
            for n, tools in self._tools.items()
        }
        self._system_tokens = {lang: sizer.count(text) for lang, text in _SYSTEM.items()}
        self._pools: dict[str, _ToolPools] = {}

    def _pool(self, lang: Literal["en", "zh"]) -> _ToolPools:
        found = self._pools.get(lang)
        if found is None:
            rng = _stream(self.seed, "tools", lang)
            count = self.sizer.count
            asks = []
            for _ in range(self.POOL):
                index = rng.randrange(len(_ASKS[lang]))
                text = _fill(_ASKS[lang][index], lang, rng)
                asks.append((text, count(text), index >= 3 or rng.random() < 0.3))
            json_asks = [
                (t, count(t)) for t in (_fill(_JSON_ASK[lang], lang, rng) for _ in range(self.POOL // 4))
            ]
            rounds = []
            for _ in range(self.POOL // 2):
                call, result = _search_round(lang, rng)
                arguments = call["tool_calls"][0]["function"]["arguments"]
                rounds.append((call, result, count(arguments) + count(result["content"]) + TOOL_ROUND_TOKENS))
            found = self._pools[lang] = _ToolPools(asks, json_asks, rounds)
        return found

    def next_request(self) -> RequestSpec:
        rng = self.rng
        lang = self.language(rng)
        pool = self._pool(lang)
        max_tokens = self.output_len(rng)
        system: Message = {"role": "system", "content": _SYSTEM[lang]}
        tokens = self._system_tokens[lang]
        if self.count % 3 == 2:
            ask, ask_tokens = pool.json_asks[rng.randrange(len(pool.json_asks))]
            messages = [system, {"role": "user", "content": ask}]
            body: dict[str, Any] = {
                "messages": messages,
                "max_tokens": max_tokens,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "trip", "schema": TRIP_SCHEMA},
                },
            }
            return self.spec(body, chat_tokens(tokens + ask_tokens, len(messages)), max_tokens)
        ask, ask_tokens, hotel = pool.asks[rng.randrange(len(pool.asks))]
        tools = self._tools[3 if hotel else 2]
        messages = [system, {"role": "user", "content": ask}]
        tokens += ask_tokens + self._tools_tokens[len(tools)]
        if rng.random() < 0.4:
            call, result, round_tokens = pool.rounds[rng.randrange(len(pool.rounds))]
            messages += [call, result]
            tokens += round_tokens
        body = {"messages": messages, "max_tokens": max_tokens, "tools": tools, "tool_choice": "auto"}
        return self.spec(self.finish(body), chat_tokens(tokens, len(messages)), max_tokens)


def _fill(template: str, lang: str, rng: random.Random) -> str:
    return template.format(
        city=rng.choice(_CITIES[lang]),
        topic=rng.choice(_TOPICS[lang]),
        who=rng.choice(_WHO[lang]),
        days=rng.randint(2, 7),
        date=f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        price=rng.randrange(300, 2000, 50),
    )


def _search_round(lang: str, rng: random.Random) -> tuple[Message, Message]:
    """An assistant search_segments call and the tool's answer."""
    city = rng.choice(_CITIES[lang])
    topic = rng.choice(_TOPICS[lang])
    call_id = f"call_{rng.getrandbits(96):024x}"
    arguments = orjson.dumps({"query": topic, "city": city, "limit": 5}).decode()
    function = {"name": "search_segments", "arguments": arguments}
    call: Message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }
    segments = [
        {
            "id": rng.randrange(10_000, 99_999),
            "title": f"{city} {topic} #{k + 1}",
            "start": round(rng.uniform(0, 600), 1),
            "duration": round(rng.uniform(20, 240), 1),
            "views": rng.randrange(1_000, 2_000_000),
        }
        for k in range(rng.randint(3, 8))
    ]
    content = orjson.dumps({"segments": segments}).decode()
    result: Message = {"role": "tool", "tool_call_id": call_id, "content": content}
    return call, result


# ---- trace ------------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class TraceLine:
    timestamp: float
    input_tokens: int
    output_tokens: int
    prompt: str | None = None
    tenant: str | None = None


def read_trace(path: str | os.PathLike[str]) -> list[TraceLine]:
    """Lines of a JSONL trace, in file order; blank lines are skipped; errors name the file and line."""
    lines: list[TraceLine] = []
    try:
        raw_lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
    for number, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON: {exc}") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object")
        unknown = set(item) - {"timestamp", "input_tokens", "output_tokens", "prompt", "tenant"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        ts = item.get("timestamp")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts < 0:
            raise ValueError(f"{where}: timestamp must be a number of seconds >= 0, got {ts!r}")
        counts: list[int] = []
        for key in ("input_tokens", "output_tokens"):
            value = item.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LENGTH:
                raise ValueError(f"{where}: {key} must be an integer >= 1, got {value!r}")
            counts.append(value)
        prompt, tenant = item.get("prompt"), item.get("tenant")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"{where}: prompt must be a string")
        if tenant is not None and not isinstance(tenant, str):
            raise ValueError(f"{where}: tenant must be a string")
        lines.append(TraceLine(float(ts), counts[0], counts[1], prompt, tenant))
    return lines


class TraceWorkload(_Base):
    """Replays a JSONL trace: a request per line, in file order, with `RequestSpec.at` = the line's timestamp.

    Lines: `{"timestamp": s, "input_tokens": n, "output_tokens": m, "prompt"?: str, "tenant"?: str}`. Without
    a prompt, text (or ids) of `input_tokens` is generated; a prompt is sent as is (planned size stays the
    line's `input_tokens`). A line's tenant wins over the weighted draw (priority from `tenants` when named
    there). With `workers` > 1 each worker replays its share (line i to worker i % workers). Never wraps:
    `len()` is the number of requests this worker will plan, and `next_request` raises IndexError once they
    are all planned.
    """

    name = "trace"

    def __init__(
        self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int, workers: int = 1
    ) -> None:
        super().__init__(settings, sizer, seed, worker)
        if not settings.trace_file:
            raise ValueError("the trace workload needs a trace_file")
        self.lines = read_trace(settings.trace_file)[worker % workers :: workers]
        self._next = 0

    def __len__(self) -> int:
        return len(self.lines)

    def next_request(self) -> RequestSpec:
        if self._next >= len(self.lines):
            raise IndexError(f"trace exhausted after {len(self.lines)} requests")
        line = self.lines[self._next]
        self._next += 1
        prompt: Prompt = line.prompt if line.prompt is not None else self.prompt(line.input_tokens, self.rng)
        spec = self.single(prompt, line.input_tokens, line.output_tokens)
        spec.at = line.timestamp
        if line.tenant is not None:
            spec.tenant, spec.priority = self.tenants.named(line.tenant)
        return spec


# ---- the registry -----------------------------------------------------------------------------------------

WORKLOADS: dict[str, type[_Base]] = {
    "random": RandomWorkload,
    "shared-prefix": SharedPrefixWorkload,
    "multi-turn": MultiTurnWorkload,
    "sharegpt-like": ShareGPTLikeWorkload,
    "tools": ToolsWorkload,
    "trace": TraceWorkload,
}


def make_workload(
    settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int = 0, workers: int = 1
) -> Workload:
    """The workload of `settings.kind` for one worker.

    `seed` is the run's seed, the same in every worker: shared-prefix contents depend on it alone. `worker`
    (any int >= 0, e.g. `level * processes + w` for a stream per level and worker) picks the streams of
    everything drawn per request. `workers` > 1 shards a trace: this worker replays lines i with
    i % workers == worker % workers; with the default 1 every worker gets the whole trace.
    """
    if worker < 0 or workers < 1:
        raise ValueError(f"worker must be >= 0 and workers >= 1, got worker={worker} workers={workers}")
    problem = _inconsistency(settings)
    if problem:
        raise ValueError(problem)
    if settings.kind == "trace":
        return TraceWorkload(settings, sizer, seed, worker, workers)
    return WORKLOADS[settings.kind](settings, sizer, seed, worker)
