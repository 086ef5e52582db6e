"""Per-request limits checked before any byte goes upstream: output tokens, choices, and the priority."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetgate.protocol import BadRequestError, lax_int

__all__ = ["PRIORITY_HEADER", "RequestLimits", "apply_token_limits", "cap_choices", "priority"]

PRIORITY_HEADER = b"x-fleetgate-priority"


@dataclass(frozen=True)
class RequestLimits:
    max_tokens_default: int  # when a request sets none
    max_tokens_cap: int  # the largest accepted
    max_n: int  # choices per request


def apply_token_limits(body: dict[str, Any], limits: RequestLimits, key: str = "max_tokens") -> bool:
    """Check the request's output-token limit against the cap, or set the default; True if `body` changed.
    Values are read as vLLM reads them (8.0 and "8" are 8) and passed on as given."""
    names = [key, "max_completion_tokens"] if key == "max_tokens" else [key]
    given = [(n, lax_int(body[n], n)) for n in names if body.get(n) is not None]
    for name, value in given:
        if value is None or value < 1:
            raise BadRequestError(f"`{name}` must be a positive integer", param=name)
        if value > limits.max_tokens_cap:
            raise BadRequestError(
                f"`{name}` is {value}, above this deployment's cap of {limits.max_tokens_cap}", param=name
            )
    if not given:
        body[key] = limits.max_tokens_default
        return True
    return False


def cap_choices(body: dict[str, Any], limits: RequestLimits) -> None:
    """`n` (choices generated for one request) within the pool's limit."""
    n = lax_int(body.get("n"), "n")
    if n is not None and n > limits.max_n:
        raise BadRequestError(f"`n` is {n}, above this deployment's limit of {limits.max_n}", param="n")


def priority(default: int, headers: Mapping[bytes, bytes], honour_header: bool) -> int:
    """The tenant's priority, or the request's own header where the operator allows it."""
    given = headers.get(PRIORITY_HEADER) if honour_header else None
    if given is None:
        return default
    try:
        return int(given)
    except ValueError:
        raise BadRequestError(
            "the x-fleetgate-priority header must be an integer", param="x-fleetgate-priority"
        ) from None
