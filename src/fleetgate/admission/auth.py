"""Who is calling: API keys kept only as SHA-256 digests; a presented key is hashed and compared in
constant time. A key comes as `Authorization: Bearer <key>`, or in `x-api-key` as Anthropic's clients send it.

An empty keyring is an open gateway: every caller is the tenant "anonymous" at priority 0.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["ANONYMOUS", "Keyring", "Tenant"]


@dataclass(frozen=True)
class Tenant:
    name: str
    priority: int


ANONYMOUS = Tenant("anonymous", 0)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Keyring:
    def __init__(self, keys: Iterable[tuple[str, str, int]] = ()) -> None:
        """`keys`: (tenant name, secret, priority) for each key."""
        self._keys = {_digest(secret): Tenant(name, priority) for name, secret, priority in keys}

    @property
    def open(self) -> bool:
        return not self._keys

    def tenant(self, headers: Mapping[bytes, bytes]) -> Tenant | None:
        """The tenant whose key the request presents; None when it presents none or an unknown one."""
        if not self._keys:
            return ANONYMOUS
        auth = headers.get(b"authorization", b"").decode(errors="replace")
        scheme, _, token = auth.partition(" ")
        if not auth and b"x-api-key" in headers:
            # Anthropic's clients send their key in x-api-key (and no Authorization).
            scheme, token = "bearer", headers[b"x-api-key"].decode(errors="replace")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = _digest(token.strip())
        for known, tenant in self._keys.items():
            if hmac.compare_digest(known, digest):
                return tenant
        return None
