"""Chained block keys of a prompt: what the prefix indexes store and look up.

A key names a whole prefix, not one block: key i covers the first (i + 1) blocks, so two prompts share key i
exactly when their first i + 1 blocks are equal, as in vLLM's chained block hashes. The chain value is a
running CRC-32 over the prefix (zlib continues a CRC from a previous value at C speed), and the key packs it
with the block's position, so keys of different depths never collide.

Two spaces of keys, one per pool:
- token space: blocks of `block_size` token ids, the engine's own blocks; KV-cache events are translated into
  this space (`extend`), so the precise index and requests with token ids meet here;
- text space: blocks of `4 * block_size` bytes of the rendered prompt, for pools without a tokenizer; an
  approximation of the token blocks (about four bytes a token) that is consistent from request to request.

The seed separates adapters: a LoRA adapter's blocks never match the base model's (vLLM keys them apart too).
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BYTES_PER_TOKEN", "Chain", "seed_for", "token_keys"]

BYTES_PER_TOKEN = 4
_TOKEN = "I"  # array type code of a token id: 4 bytes, every vocabulary fits


def seed_for(adapter: str | None) -> int:
    """The chain's starting value: 0 for a base model, a value of its own for each adapter."""
    return 0 if not adapter else zlib.crc32(adapter.encode())


def _key(depth: int, crc: int) -> int:
    return (depth << 32) | crc


@dataclass(slots=True)
class Chain:
    """A chain in progress: `extend` it with more of the prompt, read `keys`; cheap to copy for reuse."""

    block_bytes: int
    crc: int = 0
    keys: list[int] | None = None
    tail: bytes = b""  # the bytes of an incomplete last block

    @classmethod
    def start(cls, block_bytes: int, seed: int = 0) -> Chain:
        return cls(block_bytes, seed, [], b"")

    def copy(self) -> Chain:
        return Chain(self.block_bytes, self.crc, list(self.keys or ()), self.tail)

    def extend(self, data: bytes) -> Chain:
        keys = self.keys if self.keys is not None else []
        size = self.block_bytes
        if self.tail:
            data = self.tail + data
        crc = self.crc
        view = memoryview(data)
        full = len(data) - len(data) % size
        depth = len(keys)
        for offset in range(0, full, size):
            crc = zlib.crc32(view[offset : offset + size], crc)
            keys.append(_key(depth, crc))
            depth += 1
        self.crc, self.keys, self.tail = crc, keys, bytes(view[full:])
        return self

    def extend_tokens(self, ids: Sequence[int]) -> Chain:
        packed = ids if isinstance(ids, array) and ids.typecode == _TOKEN else array(_TOKEN, ids)
        return self.extend(packed.tobytes())


def token_keys(ids: Sequence[int], block_size: int, seed: int = 0) -> list[int]:
    """Keys of every full block of a token-id prompt."""
    chain = Chain.start(block_size * array(_TOKEN).itemsize, seed).extend_tokens(ids)
    return chain.keys or []
