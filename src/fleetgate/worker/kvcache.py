"""The paged KV cache: a fixed block pool, prefix caching by block-hash chain, LRU eviction, KV events.

Modelled on vLLM V1's KVCacheManager: a block is cached once full; a freed cached block stays reusable
until the allocator takes it from the front of the free queue, which evicts it (`BlockRemoved`). Freed
blocks join the queue tail-first so a request's last blocks go before its shared prefix.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_MASK64 = (1 << 64) - 1


@dataclass(slots=True, eq=False)
class Block:
    id: int
    ref: int = 0
    hash: int | None = None


def lora_key(lora_name: str | None) -> int:
    return 0 if lora_name is None else zlib.crc32(lora_name.encode())


def block_hash(parent: int | None, tokens: Sequence[int], lora: int) -> int:
    # A tuple of ints hashes the same in every process (no str salting), and in C: fast enough to hash
    # a 100k-token prompt in a few milliseconds.
    return hash((parent, lora, *tokens)) & _MASK64


def chain_hashes(tokens: Sequence[int], block_size: int, lora: int, parent: int | None = None) -> list[int]:
    """Hashes of every full block of `tokens`, each chained to the one before."""
    out: list[int] = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = block_hash(parent, tokens[start : start + block_size], lora)
        out.append(parent)
    return out


@dataclass(slots=True)
class KVEvents:
    """Events of one engine step, in vLLM's order of occurrence."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def stored(
        self,
        hashes: list[int],
        parent: int | None,
        tokens: list[int],
        block_size: int,
        lora_id: int | None,
        lora_name: str | None,
    ) -> None:
        self.items.append(
            {
                "type": "BlockStored",
                "block_hashes": hashes,
                "parent_block_hash": parent,
                "token_ids": tokens,
                "block_size": block_size,
                "lora_id": lora_id,
                "medium": "GPU",
                "lora_name": lora_name,
                "extra_keys": [None] * len(hashes),
                "group_idx": 0,
                "kv_cache_spec_kind": "full_attention",
            }
        )

    def removed(self, h: int) -> None:
        self.items.append({"type": "BlockRemoved", "block_hashes": [h], "medium": "GPU", "group_idx": 0})


class KVCache:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("num_blocks must be at least 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self._blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, Block] = OrderedDict((b.id, b) for b in self._blocks)
        # Several blocks may hold one hash (vLLM recomputes a fully cached prompt's last block and stores
        # it again), so a hash maps to its blocks and each eviction is reported on its own.
        self._cached: dict[int, dict[int, Block]] = {}
        self.events = KVEvents()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def longest_hit(self, hashes: Sequence[int]) -> int:
        """How many leading block hashes are cached."""
        if not self.prefix_caching:
            return 0
        n = 0
        for h in hashes:
            if h not in self._cached:
                break
            n += 1
        return n

    def touch(self, hashes: Sequence[int]) -> list[Block]:
        """Take a reference on the cached blocks of `hashes` (all must be cached)."""
        out: list[Block] = []
        for h in hashes:
            block = next(iter(self._cached[h].values()))
            if block.ref == 0:
                del self._free[block.id]
            block.ref += 1
            out.append(block)
        return out

    def allocate(self, n: int) -> list[Block] | None:
        if n > len(self._free):
            return None
        out: list[Block] = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.hash is not None:
                self._evict(block)
            block.ref = 1
            out.append(block)
        return out

    def grow(self, blocks: list[Block], tokens: int) -> bool:
        """Append to `blocks` until they hold `tokens`; False, changing nothing, if too few are free."""
        need = -(-tokens // self.block_size) - len(blocks)
        if need <= 0:
            return True
        got = self.allocate(need)
        if got is None:
            return False
        blocks += got
        return True

    def _evict(self, block: Block) -> None:
        h = block.hash
        assert h is not None
        holders = self._cached[h]
        del holders[block.id]
        if not holders:
            del self._cached[h]
        block.hash = None
        self.events.removed(h)

    def commit(self, block: Block, h: int) -> None:
        """Mark a just-filled block as cached under `h`."""
        if not self.prefix_caching:
            return
        block.hash = h
        self._cached.setdefault(h, {})[block.id] = block

    def free(self, blocks: Sequence[Block]) -> None:
        for block in reversed(blocks):
            block.ref -= 1
            if block.ref == 0:
                if block.hash is None:
                    # Never cached: nothing to keep, so it is reused first.
                    self._free[block.id] = block
                    self._free.move_to_end(block.id, last=False)
                else:
                    self._free[block.id] = block

    def reset(self) -> bool:
        """Drop every cached block; False (as vLLM) while requests still hold blocks.

        vLLM 0.26 publishes no AllBlocksCleared for this (observed), so neither do we: subscribers must
        cope with an index that outlives the cache.
        """
        if len(self._free) != self.num_blocks:
            return False
        for block in self._blocks:
            block.hash = None
        self._cached.clear()
        return True

    def cached_hashes(self) -> list[int]:
        return list(self._cached)

    def drain_events(self) -> list[dict[str, Any]]:
        items = self.events.items
        self.events.items = []
        return items
