"""The Ollama routes the gateway answers itself: `/api/version`, `/api/tags`, `/api/show`, `/api/ps`.

A fleet has no model files: sizes and digests describe nothing on disk. Names are listed with Ollama's
`:latest` tag when they have none (clients show and send them back that way; `name:latest` finds `name`), and
the digest is a hash of the name so that a client's cache keys stay stable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["OLLAMA_VERSION", "ps_body", "show_body", "tagged", "tags_body"]

# The Ollama API level the gateway speaks (tools, structured outputs, /api/embed, thinking fields); clients
# that check a minimum version read this.
OLLAMA_VERSION = "0.14.0"

_DETAILS = {
    "parent_model": "",
    "format": "",
    "family": "",
    "families": None,
    "parameter_size": "",
    "quantization_level": "",
}


def tagged(name: str) -> str:
    return name if ":" in name else name + ":latest"


def _entry(name: str, now: datetime) -> dict[str, Any]:
    shown = tagged(name)
    return {
        "name": shown,
        "model": shown,
        "modified_at": now.isoformat(),
        "size": 0,
        "digest": hashlib.sha256(shown.encode()).hexdigest(),
        "details": dict(_DETAILS),
    }


def tags_body(names: Iterable[str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"models": [_entry(n, now) for n in names]}


def ps_body(names: Iterable[str]) -> dict[str, Any]:
    """Models with a routable endpoint now: what a fleet has "loaded"."""
    now = datetime.now(UTC)
    later = (now + timedelta(days=3650)).isoformat()
    return {"models": [{**_entry(n, now), "expires_at": later, "size_vram": 0} for n in names]}


def show_body(name: str, upstream: str) -> dict[str, Any]:
    return {
        "license": "",
        "modelfile": f"# served by fleetgate\nFROM {upstream}\n",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": dict(_DETAILS),
        "model_info": {"general.basename": upstream},
        "capabilities": ["completion", "tools"],
        "modified_at": datetime.now(UTC).isoformat(),
    }
