"""What every workload shares: the `Workload` protocol, the chat-template estimate, body builders, tenant
picking and seeded streams."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import Any, Literal, Protocol

from fleetgate.bench.records import RequestSpec
from fleetgate.bench.sizing import Sizer
from fleetgate.bench.workloads.lengths import length_dist
from fleetgate.bench.workloads.settings import Tenant, WorkloadSettings

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

Prompt = str | list[int]
Message = dict[str, Any]


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
