"""Which endpoint has which prompt prefix cached: the state the prefix scorer reads.

Both indexes map a block key (`prefix_keys`) to a bitmask of the endpoints holding it, so one walk along a
prompt's keys answers for every endpoint at once and stops where the longest match ends.

- `ApproxIndex` guesses: every routed prompt's keys go into that endpoint's LRU, sized like its KV cache.
- `PreciseIndex` knows: it is fed the endpoint's own KV-cache events (BlockStored / BlockRemoved /
  AllBlocksCleared), translated from vLLM's block hashes into our keys through the token ids the events carry.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleetgate.fleet.prefix_keys import Chain, seed_for

__all__ = ["ApproxIndex", "BlockIndex", "PreciseIndex"]


class BlockIndex:
    """key -> bitmask of holders; each endpoint name gets a bit the first time it is seen."""

    def __init__(self) -> None:
        self.holders: dict[int, int] = {}
        self._bits: dict[str, int] = {}
        self._next = 0  # the next bit never handed out
        self._free: list[int] = []  # bit positions of forgotten endpoints (a heap: lowest reused first)

    def bit(self, endpoint: str) -> int:
        b = self._bits.get(endpoint)
        if b is None:
            if self._free:
                b = 1 << heapq.heappop(self._free)
            else:
                b = 1 << self._next
                self._next += 1
            self._bits[endpoint] = b
        return b

    def clear(self, endpoint: str) -> None:
        """Drop everything the endpoint holds."""

    def forget(self, endpoint: str) -> None:
        """The endpoint left the pool for good (a deleted pod): clear it and free its bit for another, so
        masks stay as wide as the pool is, not as the number of pods it ever had."""
        self.clear(endpoint)
        b = self._bits.pop(endpoint, None)
        if b is not None:
            heapq.heappush(self._free, b.bit_length() - 1)

    def _set(self, key: int, bit: int) -> None:
        self.holders[key] = self.holders.get(key, 0) | bit

    def _unset(self, key: int, bit: int) -> None:
        mask = self.holders.get(key, 0) & ~bit
        if mask:
            self.holders[key] = mask
        else:
            self.holders.pop(key, None)

    def match(self, keys: Sequence[int], endpoints: Sequence[str]) -> list[int]:
        """For each endpoint, how many leading blocks of `keys` it holds (the first miss ends its prefix)."""
        bits = [self.bit(e) for e in endpoints]
        alive = 0
        for b in bits:
            alive |= b
        hits = dict.fromkeys(bits, len(keys))
        holders = self.holders
        for depth, key in enumerate(keys):
            now = holders.get(key, 0) & alive
            if now != alive:
                gone = alive & ~now
                for b in bits:
                    if gone & b:
                        hits[b] = depth
                alive = now
                if not alive:
                    break
        return [hits[b] for b in bits]


class ApproxIndex(BlockIndex):
    """What we routed where, forgotten least-recently-used first once an endpoint's capacity is reached."""

    def __init__(self, default_capacity: int) -> None:
        super().__init__()
        self.default_capacity = default_capacity
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}

    def blocks(self, endpoint: str) -> int:
        """How many keys the endpoint holds."""
        return len(self._lru.get(endpoint, ()))

    def set_capacity(self, endpoint: str, blocks: int) -> None:
        self._capacity[endpoint] = max(1, blocks)

    def record(self, endpoint: str, keys: Iterable[int]) -> None:
        """The endpoint was given a prompt with these keys: it will hold them once it has run it."""
        lru = self._lru.setdefault(endpoint, OrderedDict())
        bit = self.bit(endpoint)
        for key in keys:
            if key in lru:
                lru.move_to_end(key)
            else:
                lru[key] = None
                self._set(key, bit)
        capacity = self._capacity.get(endpoint, self.default_capacity)
        while len(lru) > capacity:
            old, _ = lru.popitem(last=False)
            self._unset(old, bit)

    def clear(self, endpoint: str) -> None:
        keys = self._lru.pop(endpoint, ())
        bit = self._bits.get(endpoint)  # not self.bit(): clearing must not hand a forgotten name a bit
        if bit is not None:
            for key in keys:
                self._unset(key, bit)

    def forget(self, endpoint: str) -> None:
        super().forget(endpoint)
        self._capacity.pop(endpoint, None)


@dataclass(slots=True)
class _Block:
    key: int | None  # None: its chain could not be followed (a parent event was missed)
    crc: int
    stores: int = 1


class PreciseIndex(BlockIndex):
    """An endpoint's KV cache as its events describe it.

    vLLM names blocks by hashes we cannot recompute, so each stored block is translated once: its parent's
    chain value (known from the parent's own event) continued with the block's token ids gives our key. A
    block whose parent we never saw (events missed) cannot be translated and is remembered as unknown, so its
    descendants are skipped too. The same hash can be stored more than once (vLLM re-stores the last block of
    a fully cached prompt) and is removed once per store, so blocks are reference-counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[str, dict[int, _Block]] = {}  # endpoint -> vLLM block hash -> block
        self._refs: dict[str, dict[int, int]] = {}  # endpoint -> our key -> live stores

    def stored(
        self,
        endpoint: str,
        block_hashes: Sequence[int],
        parent: int | None,
        token_ids: Sequence[int],
        block_size: int,
        lora_name: str | None,
    ) -> None:
        blocks = self._blocks.setdefault(endpoint, {})
        refs = self._refs.setdefault(endpoint, {})
        bit = self.bit(endpoint)
        block_bytes = block_size * 4
        # The chain we are on: (crc, depth of the next block), or None when it cannot be followed.
        at: tuple[int, int] | None = (seed_for(lora_name), 0)
        if parent is not None:
            known = blocks.get(parent)
            at = None if known is None or known.key is None else (known.crc, (known.key >> 32) + 1)
        for i, vhash in enumerate(block_hashes):
            block = blocks.get(vhash)
            if block is not None:
                block.stores += 1
                if block.key is None:
                    at = None
                else:
                    refs[block.key] += 1
                    at = (block.crc, (block.key >> 32) + 1)
                continue
            ids = token_ids[i * block_size : (i + 1) * block_size]
            if at is None or len(ids) < block_size:
                blocks[vhash] = _Block(None, 0)
                at = None
                continue
            crc, depth = at
            chain = Chain(block_bytes, crc, []).extend_tokens(ids)
            key = (depth << 32) | chain.crc
            blocks[vhash] = _Block(key, chain.crc)
            refs[key] = refs.get(key, 0) + 1
            self._set(key, bit)
            at = (chain.crc, depth + 1)

    def blocks(self, endpoint: str) -> int:
        """How many of our keys the endpoint holds."""
        return len(self._refs.get(endpoint, {}))

    def removed(self, endpoint: str, block_hashes: Iterable[int]) -> None:
        blocks = self._blocks.get(endpoint, {})
        refs = self._refs.get(endpoint, {})
        bit = self.bit(endpoint)
        for vhash in block_hashes:
            block = blocks.get(vhash)
            if block is None:
                continue
            block.stores -= 1
            if block.stores <= 0:
                del blocks[vhash]
            if block.key is None:
                continue
            refs[block.key] -= 1
            if refs[block.key] <= 0:
                del refs[block.key]
                self._unset(block.key, bit)

    def clear(self, endpoint: str) -> None:
        keys = self._refs.pop(endpoint, {})
        bit = self._bits.get(endpoint)  # not self.bit(): clearing must not hand a forgotten name a bit
        if bit is not None:
            for key in keys:
                self._unset(key, bit)
        self._blocks.pop(endpoint, None)

    def forget(self, endpoint: str) -> None:
        super().forget(endpoint)
        self._refs.pop(endpoint, None)
