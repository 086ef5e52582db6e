"""Who is calling: fleet-file keys (kept as SHA-256 digests, compared in constant time) and keys issued at
run time (`fleetgate keys create`, looked up in the in-memory key cache by digest: no database read). A key
comes as `Authorization: Bearer <key>`, or in `x-api-key` as Anthropic's clients send it.

A gateway with no fleet-file keys and no key store is open: every caller is the tenant "anonymous" at
priority 0. A gateway with a key store is never open, even before its first key is issued.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetgate.tenancy.keycache import KeyCache
    from fleetgate.tenancy.keys import KeyRecord

__all__ = ["ANONYMOUS", "Keyring", "Tenant"]


@dataclass(frozen=True)
class Tenant:
    name: str
    priority: int
    key: KeyRecord | None = None  # the issued key presented; None for fleet-file keys and an open gateway


ANONYMOUS = Tenant("anonymous", 0)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Keyring:
    def __init__(self, keys: Iterable[tuple[str, str, int]] = (), issued: KeyCache | None = None) -> None:
        """`keys`: (tenant name, secret, priority) for each fleet-file key; `issued`: the key cache."""
        self._keys = {_digest(secret): Tenant(name, priority) for name, secret, priority in keys}
        self.issued = issued

    @property
    def open(self) -> bool:
        return not self._keys and self.issued is None

    def tenant(self, headers: Mapping[bytes, bytes]) -> Tenant | None:
        """The tenant whose key the request presents; None when it presents none, an unknown one, or an
        issued key that is revoked or expired."""
        if self.open:
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
        if self.issued is not None:
            record = self.issued.keys.get(digest)
            if record is not None and record.live(time.time()):
                return Tenant(record.tenant, record.priority, record)
        return None
