"""Subscriber to an endpoint's KV-cache events (vLLM's ZMQ publisher), feeding the pool's precise index.

Frames are `[topic, 8-byte big-endian sequence number, msgpack batch]`, a batch is `[ts, [event, ...],
dp_rank]`, an event a map with a `type` (vLLM 0.26) or an array tagged by its first item (older releases).

vLLM cannot replay its cache, so whenever the picture may be incomplete the endpoint's precise index is
cleared and the endpoint marked not live, which sends its scoring back to the approximate index:
- a gap in sequence numbers (events dropped at the publisher's high-water mark);
- a sequence number going backwards (the engine restarted with an empty cache);
- silence: requests were sent there but no event came for `silence` seconds.
It turns live again with the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from fleetgate.fleet.prefix_index import PreciseIndex
from fleetgate.fleet.state import Endpoint

__all__ = ["KVEventSubscriber", "apply_batch"]

log = logging.getLogger("fleetgate.kv_events")
_ARRAY_FIELDS = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}


def _as_map(event: Any) -> dict[str, Any] | None:
    if isinstance(event, dict):
        return event
    if isinstance(event, list | tuple) and event and isinstance(event[0], str):
        fields = _ARRAY_FIELDS.get(event[0])
        if fields is not None:
            return {"type": event[0], **dict(zip(fields, event[1:], strict=False))}
    return None


def apply_batch(index: PreciseIndex, endpoint: str, events: Sequence[Any]) -> int:
    """Apply one batch's events; returns how many were understood."""
    done = 0
    for raw in events:
        event = _as_map(raw)
        if event is None:
            continue
        kind = event.get("type")
        if event.get("medium") not in (None, "GPU"):
            continue  # blocks offloaded to CPU or disk are not what a new request's prefill reuses
        if kind == "BlockStored":
            index.stored(
                endpoint,
                list(event.get("block_hashes") or ()),
                event.get("parent_block_hash"),
                list(event.get("token_ids") or ()),
                int(event.get("block_size") or 16),
                event.get("lora_name"),
            )
        elif kind == "BlockRemoved":
            index.removed(endpoint, list(event.get("block_hashes") or ()))
        elif kind == "AllBlocksCleared":
            index.clear(endpoint)
        else:
            continue
        done += 1
    return done


class KVEventSubscriber:
    """One SUB socket per endpoint that publishes events; started and stopped with the gateway."""

    def __init__(self, index: PreciseIndex, topic: str, silence: float) -> None:
        self.index = index
        self.topic = topic.encode()
        self.silence = silence
        self._ctx = zmq.asyncio.Context()
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}
        self.batches = 0
        self.resets = 0

    def start(self, endpoints: Sequence[Endpoint]) -> None:
        for e in endpoints:
            self.watch(e)

    def watch(self, e: Endpoint) -> None:
        """Follow one endpoint's events (one discovered at run time, too)."""
        if e.kv_events and e not in self._tasks:
            self._tasks[e] = asyncio.create_task(self._listen(e), name=f"kv-events {e.name}")

    def unwatch(self, e: Endpoint) -> None:
        """An endpoint left the pool: stop listening and forget what it held."""
        task = self._tasks.pop(e, None)
        if task is not None:
            task.cancel()
        self.index.clear(e.name)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._ctx.destroy(linger=0)

    def reset(self, e: Endpoint, why: str) -> None:
        if e.kv_live:
            log.info("endpoint %s: KV index cleared (%s); approximate routing until events flow", e.name, why)
        self.index.clear(e.name)
        e.kv_live = False
        self.resets += 1

    def receive(self, e: Endpoint, seq: int, payload: bytes) -> None:
        """Handle one frame (also the unit tests' entry point)."""
        if e.kv_seq >= 0 and seq != e.kv_seq + 1:
            self.reset(e, "engine restarted" if seq <= e.kv_seq else f"{seq - e.kv_seq - 1} batches lost")
        e.kv_seq = seq
        e.kv_event_at = time.monotonic()
        e.awaiting_events_since = 0.0
        try:
            batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            events = batch[1]
        except (ValueError, msgpack.UnpackException, IndexError, TypeError) as err:
            self.reset(e, f"undecodable batch: {type(err).__name__}")
            return
        apply_batch(self.index, e.name, events)
        self.batches += 1
        e.kv_live = True

    def check_silence(self, e: Endpoint, now: float) -> None:
        since = e.awaiting_events_since
        if e.kv_live and since and now - since > self.silence:
            self.reset(e, f"no event for {self.silence:g} s after a request was sent")

    async def _listen(self, e: Endpoint) -> None:
        assert e.kv_events is not None
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        sock.connect(e.kv_events)
        try:
            while True:
                try:
                    frames = await asyncio.wait_for(sock.recv_multipart(), 1.0)
                except TimeoutError:
                    self.check_silence(e, time.monotonic())
                    continue
                if len(frames) != 3 or len(frames[1]) != 8:
                    continue
                self.receive(e, int.from_bytes(frames[1], "big"), frames[2])
        finally:
            sock.close(linger=0)
