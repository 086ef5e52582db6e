"""Request bodies as vLLM 0.26 validates them, with vLLM's error messages."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from fleetgate.protocol import BadRequestError, RequestValidationError


class Body(BaseModel):
    # vLLM accepts and ignores fields it does not know (it only logs them).
    model_config = ConfigDict(extra="allow")


class StreamOptions(Body):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class FunctionDef(Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(Body):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionCall(Body):
    name: str
    arguments: str = "{}"


class ToolCall(Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class NamedFunction(Body):
    name: str


class NamedToolChoice(Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class _Sampling(Body):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True


class CompletionRequest(_Sampling):
    prompt: list[int] | list[list[int]] | str | list[str]
    logprobs: int | None = None
    echo: bool | None = False


class ResponsesRequest(Body):
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class TokenizeRequest(Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: list[ToolDef] | None = None


class EmbeddingRequest(Body):
    model: str | None = None
    input: list[int] | list[list[int]] | str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class LoadLoRARequest(Body):
    lora_name: str
    lora_path: str = ""
    load_inplace: bool = False


class UnloadLoRARequest(Body):
    lora_name: str
    lora_int_id: int | None = None


M = TypeVar("M", bound=BaseModel)


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # orjson's messages differ from the stdlib's, which FastAPI (and so vLLM) reports.
    try:
        json.loads(raw)
    except json.JSONDecodeError as e:
        err = {"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error", "input": {}}
        err["ctx"] = {"error": e.msg}
        raise _validation_error([err]) from None
    except UnicodeDecodeError:
        err = {"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error", "input": {}}
        raise _validation_error([err]) from None
    raise RequestValidationError("could not parse the body as JSON", param="body")


def _validation_error(errors: list[dict[str, Any]]) -> RequestValidationError:
    n = len(errors)
    text = f"{n} validation error{'s' if n > 1 else ''}:\n  " + "\n  ".join(str(e) for e in errors)
    param = ".".join(str(p) for p in errors[0]["loc"])
    return RequestValidationError(text, param=param)


def validate(model: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        err = {"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be a valid dictionary"}
        err["input"] = body
        raise _validation_error([err])
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = [
            {k: (("body", *err["loc"]) if k == "loc" else v) for k, v in err.items() if k != "url"}
            for err in e.errors(include_url=False)
        ]
        raise _validation_error(errors) from None


def _param_error(name: str, value: Any, rule: str) -> BadRequestError:
    return BadRequestError(f"{name} {rule}, got {value}. (parameter={name}, value={value})", param=name)


def check_sampling(req: _Sampling | ChatCompletionRequest) -> None:
    """vLLM's SamplingParams checks, with its wording."""
    if req.temperature is not None and req.temperature < 0:
        raise _param_error("temperature", float(req.temperature), "must be non-negative")
    if req.top_p is not None and not 0 < req.top_p <= 1:
        raise _param_error("top_p", float(req.top_p), "must be in (0, 1]")
    if req.top_k is not None and (req.top_k < -1 or req.top_k == 0):
        raise _param_error("top_k", req.top_k, "must be -1 (disable), or at least 1")
    if req.n < 1:
        raise _param_error("n", req.n, "must be at least 1")
    if req.max_tokens is not None and req.max_tokens < 1:
        raise _param_error("max_tokens", req.max_tokens, "must be at least 1")
    if req.min_tokens < 0:
        raise _param_error("min_tokens", req.min_tokens, "must be greater than or equal to 0")


class ContextLengthError(BadRequestError):
    """A request that cannot fit the context. vLLM raises these (a `VLLMValidationError`) where it returns
    most other 400s: the OpenAI routes answer both alike, but `/v1/messages` answers everything raised under
    it as a 500 `internal_error` (recorded from vLLM 0.26: tests/data/messages_contract.json, `err_too_long`;
    the two context-length messages below come from the same vLLM check and are treated alike)."""


def resolve_max_tokens(
    requested: int | None, prompt_len: int, max_model_len: int, field: str = "max_tokens"
) -> int:
    """The output budget vLLM grants, or its 400 when the request cannot fit the context. `field` is the
    request's name for the budget, which vLLM's message names (`max_completion_tokens` when a chat request
    gave that one, as vLLM's own Messages conversion does)."""
    if requested is not None and requested > max_model_len:
        raise ContextLengthError(
            f"{field}={requested} cannot be greater than max_model_len=max_total_tokens={max_model_len}. "
            f"Please request fewer output tokens. (parameter={field}, value={requested})",
            param=field,
        )
    if requested is None:
        if prompt_len >= max_model_len:
            raise ContextLengthError(
                f"This model's maximum context length is {max_model_len} tokens. However, your request has "
                f"{prompt_len} input tokens. Please reduce the length of the input messages. "
                f"(parameter=input_tokens, value={prompt_len})",
                param="input_tokens",
            )
        return max_model_len - prompt_len
    if prompt_len + requested > max_model_len:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{requested} output tokens and your prompt contains {prompt_len} input tokens, for a total of "
            f"{prompt_len + requested} tokens. Please reduce the length of the input prompt or the number of "
            f"requested output tokens. (parameter=input_tokens, value={prompt_len})",
            param="input_tokens",
        )
    return requested


def resolve_chat_max_tokens(req: ChatCompletionRequest, prompt_len: int, max_model_len: int) -> int:
    """`resolve_max_tokens` for a chat request: its `max_completion_tokens` when given (and named so in the
    error, as vLLM does), else its `max_tokens`."""
    if req.max_completion_tokens is not None:
        field = "max_completion_tokens"
        return resolve_max_tokens(req.max_completion_tokens, prompt_len, max_model_len, field)
    return resolve_max_tokens(req.max_tokens, prompt_len, max_model_len)
