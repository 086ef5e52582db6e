"""The paged KV cache: allocation, prefix hits, eviction order and events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.worker.kvcache import KVCache, chain_hashes, lora_key


def test_chain_hashes_depend_on_the_whole_prefix() -> None:
    a = chain_hashes(list(range(64)), 16, 0)
    b = chain_hashes([*range(16), 99, *range(17, 64)], 16, 0)
    assert len(a) == 4
    assert a[0] == b[0]
    assert all(x != y for x, y in zip(a[1:], b[1:], strict=True))  # a change poisons every later block


def test_partial_blocks_are_not_hashed_and_lora_changes_hashes() -> None:
    assert len(chain_hashes(list(range(31)), 16, 0)) == 1
    assert chain_hashes(list(range(32)), 16, 0) != chain_hashes(list(range(32)), 16, lora_key("travel-zh"))


def test_hashes_are_unsigned_64_bit() -> None:
    for h in chain_hashes(list(range(16 * 50)), 16, 0):
        assert 0 <= h < 2**64


def _fill(cache: KVCache, tokens: list[int]) -> list[int]:
    hashes = chain_hashes(tokens, cache.block_size, 0)
    blocks = cache.allocate(len(hashes))
    assert blocks is not None
    for b, h in zip(blocks, hashes, strict=True):
        cache.commit(b, h)
    cache.free(blocks)
    return hashes


def test_freed_cached_blocks_are_hits_until_evicted() -> None:
    cache = KVCache(num_blocks=4, block_size=16)
    hashes = _fill(cache, list(range(64)))
    assert cache.longest_hit(hashes) == 4
    assert cache.usage() == 0.0  # cached but free blocks count as free, as in vLLM
    cache.drain_events()
    got = cache.allocate(1)  # takes the least recently freed block: the tail of the prompt
    assert got is not None
    events = cache.drain_events()
    assert [e["type"] for e in events] == ["BlockRemoved"]
    assert events[0]["block_hashes"] == [hashes[3]]
    assert cache.longest_hit(hashes) == 3


def test_touch_takes_blocks_out_of_the_free_queue() -> None:
    cache = KVCache(num_blocks=4, block_size=16)
    hashes = _fill(cache, list(range(64)))
    held = cache.touch(hashes[:2])
    assert cache.num_free == 2
    assert cache.allocate(3) is None
    cache.free(held)
    assert cache.num_free == 4


def test_duplicate_hashes_are_each_reported_when_evicted() -> None:
    cache = KVCache(num_blocks=2, block_size=16)
    blocks = cache.allocate(2)
    assert blocks is not None
    cache.commit(blocks[0], 7)
    cache.commit(blocks[1], 7)  # the same content stored twice (recomputed last block)
    cache.free(blocks)
    cache.drain_events()
    assert cache.allocate(2) is not None
    assert [e["block_hashes"] for e in cache.drain_events()] == [[7], [7]]
    assert cache.longest_hit([7]) == 0


def test_reset_refuses_while_blocks_are_held() -> None:
    cache = KVCache(num_blocks=2, block_size=16)
    hashes = _fill(cache, list(range(32)))
    held = cache.touch(hashes[:1])
    assert cache.reset() is False
    cache.free(held)
    assert cache.reset() is True
    assert cache.longest_hit(hashes) == 0


def test_without_prefix_caching_nothing_hits() -> None:
    cache = KVCache(num_blocks=4, block_size=16, enable_prefix_caching=False)
    hashes = _fill(cache, list(range(64)))
    assert cache.longest_hit(hashes) == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["alloc", "free", "touch"]), st.integers(1, 6), st.integers(0, 3)),
        max_size=60,
    )
)
def test_block_accounting_survives_any_sequence(ops: list[tuple[str, int, int]]) -> None:
    """Free + held blocks always add up, refcounts never go negative, hits only name cached blocks."""
    cache = KVCache(num_blocks=12, block_size=4)
    held: list[list[object]] = []
    prompts = [chain_hashes(list(range(p * 100, p * 100 + 24)), 4, 0) for p in range(4)]
    for op, n, p in ops:
        if op == "alloc":
            blocks = cache.allocate(n)
            if blocks is not None:
                for b, h in zip(blocks, prompts[p], strict=False):
                    cache.commit(b, h)
                held.append(list(blocks))
        elif op == "touch":
            hit = cache.longest_hit(prompts[p])
            held.append(list(cache.touch(prompts[p][:hit])))
        elif held:
            cache.free(held.pop(0))  # type: ignore[arg-type]
        refs = sum(len(h) for h in held)
        assert cache.num_free + len({id(b) for h in held for b in h}) == 12
        assert refs >= 12 - cache.num_free
        assert 0.0 <= cache.usage() <= 1.0
        for h in cache.cached_hashes():
            assert cache.longest_hit([h]) == 1
