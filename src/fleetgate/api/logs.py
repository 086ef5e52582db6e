"""The gateway's log lines: one per answered request (with its x-request-id) plus lifecycle events, as JSON
objects or as text."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from fleetgate.config import LogConfig

# Attributes every LogRecord has; anything else was passed in `extra` and belongs in the JSON object.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _field(value: object) -> str:
    """A value as one `key=value` field: quoted (JSON-style) when it holds a space, quote, `=` or control
    character, so a client's x-request-id cannot forge fields of its own."""
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return orjson.dumps(text).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={_field(v)}" for k, v in record.__dict__.items() if k not in _STANDARD)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname:<7} {record.getMessage()}" + (f" {extra}" if extra else "")


def configure(cfg: LogConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    root = logging.getLogger("fleetgate")
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    root.propagate = False
    # httpx logs every request at INFO: the provider's readiness probes would flood the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
