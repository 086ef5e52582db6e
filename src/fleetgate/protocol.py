"""The OpenAI/vLLM wire: error shapes, SSE framing, ids and usage.

One definition shared by the gateway, the simulator, the load tester and the embedded engine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

SSE_DONE = b"data: [DONE]\n\n"


class OpenAIError(Exception):
    """An error that reaches the client as `{"error": {"message", "type", "param", "code"}}`."""

    status: int = 400
    type: str = "BadRequestError"
    headers: Sequence[tuple[bytes, bytes]] = ()  # extra response headers (Allow for a 405)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after  # seconds, sent as Retry-After with a 429 or 503
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        # vLLM repeats the HTTP status in `code`; clients such as the openai SDK read `type` and `message`.
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())

    def to_sse(self) -> bytes:
        """The final event of a stream that failed after its first byte."""
        return b"data: " + self.to_json() + b"\n\n"


class BadRequestError(OpenAIError):
    status = 400
    type = "BadRequestError"


class RequestValidationError(OpenAIError):
    """Schema-level validation failure; vLLM reports these with type "Bad Request"."""

    status = 400
    type = "Bad Request"


class InvalidUserInputError(OpenAIError):
    status = 400
    type = "InvalidUserInput"


class AuthenticationError(OpenAIError):
    status = 401
    type = "AuthenticationError"


class PermissionDeniedError(OpenAIError):
    status = 403
    type = "PermissionDeniedError"


class NotFoundError(OpenAIError):
    status = 404
    type = "NotFoundError"


class MethodNotAllowedError(OpenAIError):
    status = 405
    type = "MethodNotAllowedError"

    def __init__(self, method: str, allowed: Iterable[str]) -> None:
        names = sorted(allowed)
        super().__init__(f"method {method} not allowed here (allowed: {', '.join(names)})")
        self.headers = [(b"allow", ", ".join(names).encode())]


class PayloadTooLargeError(OpenAIError):
    status = 413
    type = "PayloadTooLargeError"


class RateLimitError(OpenAIError):
    status = 429
    type = "RateLimitError"


class InternalServerError(OpenAIError):
    status = 500
    type = "InternalServerError"


class BadGatewayError(OpenAIError):
    status = 502
    type = "BadGatewayError"


class ServiceUnavailableError(OpenAIError):
    status = 503
    type = "ServiceUnavailableError"


class GatewayTimeoutError(OpenAIError):
    status = 504
    type = "GatewayTimeoutError"


# Error types named after their status, for upstream errors that do not name one.
_STATUS_TYPES = {
    cls.status: cls.type
    for cls in (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError,
                MethodNotAllowedError, PayloadTooLargeError, RateLimitError, InternalServerError,
                BadGatewayError, ServiceUnavailableError, GatewayTimeoutError)
}  # fmt: skip


def _openai_error_of(doc: Any) -> dict[str, Any] | None:
    err = doc.get("error") if isinstance(doc, dict) else None
    return err if isinstance(err, dict) and isinstance(err.get("message"), str) else None


def is_openai_error(body: bytes) -> bool:
    """Whether an error body is OpenAI's `{"error": {"message": ...}}` (vLLM's, a hosted endpoint's)."""
    try:
        return _openai_error_of(orjson.loads(body)) is not None
    except orjson.JSONDecodeError:
        return False


def error_from_body(body: bytes, status: int) -> OpenAIError:
    """An upstream's error as an OpenAIError: its message and type when it sent OpenAI's shape; else FastAPI's
    `detail` (vLLM's answer for a route its model does not serve) or a short plain-text body as the message,
    typed after the status."""
    default = "BadRequestError" if 400 <= status < 500 else "BadGatewayError"
    message, kind = f"upstream answered {status}", _STATUS_TYPES.get(status, default)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:200].decode(errors="replace").strip()
        doc = None
        if text and not text.startswith("<") and text.isprintable():  # not an HTML page, not binary
            message = f"{message}: {text}"
    err = _openai_error_of(doc)
    if err is not None:
        message = err["message"]
        kind = str(err["type"]) if "type" in err else kind
    elif isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        message = f"{message}: {doc['detail'][:200]}"
    error = OpenAIError(message, status=status)
    error.type = kind
    return error


def model_not_found(model: str) -> NotFoundError:
    shown = model if len(model) <= 200 else model[:200] + "…"  # never echo a client's 10 KB back
    return NotFoundError(f"The model `{shown}` does not exist.", param="model")


# Strings pydantic's lax mode (what vLLM validates with) reads as booleans.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def lax_bool(value: Any, name: str) -> bool:
    """A boolean field as vLLM accepts it (null is false; "true", "yes", 1 ...); 400 otherwise."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise RequestValidationError(f"`{name}` should be a valid boolean", param=name)


def lax_int(value: Any, name: str) -> int | None:
    """An integer field as vLLM accepts it (8, 8.0, "8", "8.0"); 400 otherwise."""
    if value is None or isinstance(value, int):
        return None if value is None else int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            number = 0.5
        if number.is_integer():
            return int(number)
    raise RequestValidationError(f"`{name}` should be a valid integer", param=name)


def sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def random_id(prefix: str) -> str:
    # vLLM ids are a prefix plus 16 hex digits.
    return prefix + os.urandom(8).hex()


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self, *, with_details: bool = True) -> dict[str, Any]:
        # Key order as vLLM writes it; streamed usage omits prompt_tokens_details.
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.total_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if with_details:
            out["prompt_tokens_details"] = None
        return out
