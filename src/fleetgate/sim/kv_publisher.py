"""KV-cache events over ZMQ, framed as vLLM publishes them: [topic, 8-byte big-endian seq, msgpack batch]."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import orjson
import zmq
from pydantic import BaseModel, ConfigDict, ValidationError


class KVEventsConfig(BaseModel):
    """vLLM's `--kv-events-config` JSON (the fields the simulator honours)."""

    model_config = ConfigDict(extra="ignore")
    enable_kv_cache_events: bool = False
    publisher: str = "null"
    endpoint: str = "tcp://*:5557"
    topic: str = ""

    @classmethod
    def parse(cls, text: str) -> KVEventsConfig:
        try:
            return cls.model_validate(orjson.loads(text))
        except (orjson.JSONDecodeError, ValidationError) as e:
            raise ValueError(f"--kv-events-config is not valid: {e}") from e


class KVEventPublisher:
    def __init__(self, endpoint: str, topic: str) -> None:
        self._ctx: Any = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.bind(endpoint)
        self._topic = topic.encode()
        self._seq = 0

    def publish(self, events: list[dict[str, Any]]) -> None:
        batch = msgpack.packb([time.time(), events, 0])
        # NOBLOCK: a slow or absent subscriber must never stall the engine loop; PUB drops at the HWM.
        self._sock.send_multipart([self._topic, self._seq.to_bytes(8, "big"), batch], flags=zmq.NOBLOCK)
        self._seq += 1

    def close(self) -> None:
        self._sock.close(linger=0)
