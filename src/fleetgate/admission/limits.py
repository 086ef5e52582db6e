"""Per-request limits checked before any byte goes upstream: output tokens and the request's priority."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetgate.admission.auth import Tenant
from fleetgate.protocol import BadRequestError

__all__ = ["PRIORITY_HEADER", "TokenLimits", "apply_token_limits", "priority"]

PRIORITY_HEADER = b"x-fleetgate-priority"


@dataclass(frozen=True)
class TokenLimits:
    default: int  # max_tokens when a request sets none
    cap: int  # the largest accepted


def apply_token_limits(body: dict[str, Any], limits: TokenLimits, key: str = "max_tokens") -> bool:
    """Check the request's output-token limit against the cap, or set the default; True if `body` changed."""
    names = [key, "max_completion_tokens"] if key == "max_tokens" else [key]
    given = [(n, body[n]) for n in names if body.get(n) is not None]
    for name, value in given:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequestError(f"`{name}` must be a positive integer", param=name)
        if value > limits.cap:
            raise BadRequestError(
                f"`{name}` is {value}, above this deployment's cap of {limits.cap}", param=name
            )
    if not given:
        body[key] = limits.default
        return True
    return False


def priority(tenant: Tenant, headers: Mapping[bytes, bytes], honour_header: bool) -> int:
    """The tenant's priority, or the request's own header where the operator allows it."""
    given = headers.get(PRIORITY_HEADER) if honour_header else None
    if given is None:
        return tenant.priority
    try:
        return int(given)
    except ValueError:
        raise BadRequestError(
            "the x-fleetgate-priority header must be an integer", param="x-fleetgate-priority"
        ) from None
