"""From OpenAI request fields to token ids and sampling parameters, the way vLLM prepares them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetgate.chat_template import render_ids, template_message
from fleetgate.engines.embedded.sampling import SamplingParams
from fleetgate.protocol import BadRequestError
from fleetgate.worker.requests import ChatCompletionRequest, ChatMessage, CompletionRequest

_NO_TEMPLATE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
    "template if the tokenizer does not define one."
)


def message_dict(m: ChatMessage) -> dict[str, Any]:
    return template_message(m.model_dump(exclude_none=True))


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    add_generation_prompt: bool = True,
) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise BadRequestError(_NO_TEMPLATE)
    from jinja2 import TemplateError

    try:
        return render_ids(tokenizer, messages, tools, add_generation_prompt)
    except TemplateError as e:
        raise BadRequestError(f"the chat template failed on these messages: {e}") from None


class Defaults:
    """The model's generation_config.json sampling defaults, which vLLM applies to requests that omit them."""

    def __init__(self, path: Path) -> None:
        self.values: dict[str, Any] = {}
        file = path / "generation_config.json"
        if file.is_file():
            data = json.loads(file.read_text())
            self.values = {k: data[k] for k in ("temperature", "top_p", "top_k") if data.get(k) is not None}

    def params(
        self, body: ChatCompletionRequest | CompletionRequest, max_tokens: int, seed: int | None
    ) -> SamplingParams:
        def pick(name: str, fallback: float) -> Any:
            value = getattr(body, name, None)
            return value if value is not None else self.values.get(name, fallback)

        stop = body.stop
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=float(pick("temperature", 1.0)),
            top_p=float(pick("top_p", 1.0)),
            top_k=int(pick("top_k", -1)),
            min_tokens=body.min_tokens,
            seed=seed,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            ignore_eos=body.ignore_eos,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
        )


def eos_ids(tokenizer: Any, config: Any, path: Path) -> frozenset[int]:
    """Tokens that end an answer: the generation config's, the model config's and the tokenizer's."""
    found: set[int] = set()
    file = path / "generation_config.json"
    sources = [getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)]
    if file.is_file():
        sources.append(json.loads(file.read_text()).get("eos_token_id"))
    for value in sources:
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, int))
    return frozenset(found)
