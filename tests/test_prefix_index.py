"""Block keys, the approximate and precise prefix indexes, and the KV-event subscriber's bookkeeping."""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Mapping
from pathlib import Path

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.fleet.kv_events import KVEventSubscriber, apply_batch
from fleetgate.fleet.prefix_index import ApproxIndex, PreciseIndex
from fleetgate.fleet.prefix_keys import Chain, seed_for, token_keys
from fleetgate.fleet.state import Endpoint

DATA = Path(__file__).parent / "data"
BS = 16
TOKENS = st.lists(st.integers(0, 150_000), min_size=0, max_size=200)


# ---- keys --------------------------------------------------------------------------------------------------


def test_keys_name_whole_prefixes_of_full_blocks() -> None:
    a = list(range(100))
    b = list(range(40)) + [7] * 60
    ka, kb = token_keys(a, BS), token_keys(b, BS)
    assert len(ka) == 6  # 100 tokens: 6 full blocks, the partial seventh is not cached by vLLM either
    assert ka[:2] == kb[:2] and ka[2] != kb[2]  # blocks 0-1 equal, block 2 holds the first difference
    assert ka[3:] != kb[3:]  # and every later key differs too, even where blocks are equal again
    assert token_keys(a, BS, seed_for("sql-lora"))[0] != ka[0]  # an adapter's blocks are its own


@given(TOKENS, st.lists(st.integers(0, 200), max_size=5))
def test_a_chain_extended_in_pieces_equals_one_extension(ids: list[int], cuts: list[int]) -> None:
    chain = Chain.start(BS * 4, 7)
    points = sorted({min(c, len(ids)) for c in cuts})
    start = 0
    for p in [*points, len(ids)]:
        chain.extend_tokens(ids[start:p])
        start = p
    assert chain.keys == token_keys(ids, BS, 7)


# ---- approximate index -------------------------------------------------------------------------------------


def test_approx_match_is_a_prefix_per_endpoint() -> None:
    index = ApproxIndex(default_capacity=1000)
    shared = list(range(64))
    a = token_keys(shared + [1] * 32, BS)
    b = token_keys(shared + [2] * 32, BS)
    index.record("e1", a)
    index.record("e2", b)
    assert index.match(a, ["e1", "e2", "e3"]) == [6, 4, 0]
    assert index.match(b, ["e1", "e2"]) == [4, 6]
    assert index.match([], ["e1"]) == [0]


def test_approx_forgets_least_recently_used_blocks_at_capacity() -> None:
    index = ApproxIndex(default_capacity=10)
    old, new = token_keys(list(range(96)), BS), token_keys(list(range(1000, 1096)), BS)
    index.record("e", old)
    index.record("e", old[:2])  # touched again: now the most recent
    index.record("e", new)
    assert index.blocks("e") == 10
    assert index.match(new, ["e"]) == [6]
    assert index.match(old, ["e"]) == [2]  # its first two blocks were kept, the rest evicted
    index.set_capacity("e", 3)
    index.record("e", new[:1])
    assert index.blocks("e") == 3
    index.clear("e")
    assert index.blocks("e") == 0 and index.match(new, ["e"]) == [0]


# ---- precise index -----------------------------------------------------------------------------------------


def stored(
    index: PreciseIndex,
    ep: str,
    hashes: list[int],
    parent: int | None,
    ids: list[int],
    lora: str | None = None,
) -> None:
    index.stored(ep, hashes, parent, ids, BS, lora)


def test_events_translate_to_the_keys_a_request_computes() -> None:
    index = PreciseIndex()
    ids = list(range(5000, 5000 + 80))
    stored(index, "e", [11, 12], None, ids[:32])
    stored(index, "e", [13], 12, ids[32:48])
    stored(index, "e", [14, 15], 13, ids[48:80])
    assert index.match(token_keys(ids, BS), ["e"]) == [5]
    assert index.match(token_keys(ids[:40], BS), ["e"]) == [2]
    assert index.match(token_keys(ids, BS, seed_for("lora-a")), ["e"]) == [0]
    index.removed("e", [13])
    assert index.match(token_keys(ids, BS), ["e"]) == [2]  # block 2 is gone: the prefix ends there


def test_a_block_stored_twice_is_removed_once_per_store() -> None:
    index = PreciseIndex()
    ids = list(range(32))
    stored(index, "e", [1, 2], None, ids)
    stored(index, "e", [2], 1, ids[16:])  # vLLM re-stores the last block of a fully cached prompt
    index.removed("e", [2])
    assert index.match(token_keys(ids, BS), ["e"]) == [2]
    index.removed("e", [2])
    assert index.match(token_keys(ids, BS), ["e"]) == [1]
    index.removed("e", [2, 99])  # unknown hashes are ignored
    assert index.match(token_keys(ids, BS), ["e"]) == [1]


def test_blocks_whose_parent_was_never_seen_cannot_match() -> None:
    index = PreciseIndex()
    ids = list(range(48))
    stored(index, "e", [3], 2, ids[32:48])  # its parent's event was missed
    stored(index, "e", [4], 3, ids[:16])  # a child of an untranslatable block is untranslatable too
    assert index.blocks("e") == 0
    stored(index, "e", [1], None, ids[:16])
    assert index.match(token_keys(ids, BS), ["e"]) == [1]


def test_clearing_one_endpoint_leaves_the_others() -> None:
    index = PreciseIndex()
    ids = list(range(32))
    for ep in ("a", "b"):
        stored(index, ep, [1, 2], None, ids)
    index.clear("a")
    assert index.match(token_keys(ids, BS), ["a", "b"]) == [0, 2]
    apply_batch(index, "b", [{"type": "AllBlocksCleared"}])
    assert index.match(token_keys(ids, BS), ["a", "b"]) == [0, 0]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_events_in_any_order_never_claim_more_than_is_cached(data: st.DataObject) -> None:
    """Whatever order events arrive in (a subscriber that lost some, a reordering), the index never says a
    block is cached that the engine does not hold."""
    n_blocks = data.draw(st.integers(1, 8))
    ids = data.draw(st.lists(st.integers(0, 1000), min_size=n_blocks * BS, max_size=n_blocks * BS))
    events: list[tuple[str, int]] = [("store", i) for i in range(n_blocks)]
    events += [
        ("remove", i) for i in data.draw(st.lists(st.integers(0, n_blocks - 1), max_size=4, unique=True))
    ]
    order = data.draw(st.permutations(events))
    index = PreciseIndex()
    held: set[int] = set()
    for kind, i in order:
        if kind == "store":
            parent = None if i == 0 else 100 + i - 1
            stored(index, "e", [100 + i], parent, ids[i * BS : (i + 1) * BS])
            held.add(i)
        else:
            index.removed("e", [100 + i])
            held.discard(i)
    truly = 0
    while truly in held:
        truly += 1
    (claimed,) = index.match(token_keys(ids, BS), ["e"])
    assert claimed <= truly


def test_the_recorded_vllm_events_index_the_prompts_they_came_from() -> None:
    """vLLM 0.26's own events (kv_events.json): every stored chain is found again by its token ids. The
    recorder cut the reprs of long frames, so only whole ones are replayed (like a subscriber that lost
    some)."""
    batches = []
    for frame in json.loads((DATA / "kv_events.json").read_text()):
        try:
            batches.append(ast.literal_eval(frame["decoded_full_repr"])[1])
        except SyntaxError:
            continue
    index = PreciseIndex()
    chains: dict[int | None, list[int]] = {None: []}
    removed: set[int] = set()
    for events in batches:
        apply_batch(index, "e", events)
        for ev in events:
            if ev["type"] == "BlockStored" and ev["parent_block_hash"] in chains:
                prefix = chains[ev["parent_block_hash"]]
                for j, h in enumerate(ev["block_hashes"]):
                    chains[h] = prefix + ev["token_ids"][: (j + 1) * BS]
            elif ev["type"] == "BlockRemoved":
                removed.update(ev["block_hashes"])
    live = {h: tokens for h, tokens in chains.items() if h is not None and h not in removed}
    assert len(live) >= 3
    for tokens in live.values():
        assert index.match(token_keys(tokens, BS), ["e"]) == [len(tokens) // BS]


# ---- the subscriber's bookkeeping --------------------------------------------------------------------------


def batch(*events: Mapping[str, object]) -> bytes:
    return bytes(msgpack.packb([1.0, list(events), 0]))


def test_a_gap_a_restart_or_garbage_clears_the_endpoint_and_events_make_it_live_again() -> None:
    index = PreciseIndex()
    sub = KVEventSubscriber(index, "", 10.0)
    e = Endpoint("e", "http://x", "p", kv_events="tcp://127.0.0.1:1")
    ids = list(range(32))
    store = {"type": "BlockStored", "block_hashes": [1, 2], "parent_block_hash": None, "token_ids": ids,
             "block_size": BS, "lora_name": None, "medium": "GPU"}  # fmt: skip
    sub.receive(e, 0, batch(store))
    assert e.kv_live and index.match(token_keys(ids, BS), ["e"]) == [2]
    sub.receive(e, 1, batch())
    assert sub.resets == 0
    sub.receive(e, 5, batch())  # batches 2-4 were lost: whatever they stored or removed is unknown
    assert sub.resets == 1 and index.blocks("e") == 0 and e.kv_live
    sub.receive(e, 6, batch(store))
    sub.receive(e, 0, batch())  # the engine restarted: its cache is empty
    assert sub.resets == 2 and index.blocks("e") == 0
    sub.receive(e, 1, b"\xc1 not msgpack")
    assert sub.resets == 3 and not e.kv_live


def test_silence_after_work_was_sent_distrusts_the_index() -> None:
    sub = KVEventSubscriber(PreciseIndex(), "", 5.0)
    e = Endpoint("e", "http://x", "p", kv_events="tcp://127.0.0.1:1")
    sub.receive(e, 0, batch())
    sub.check_silence(e, now=e.kv_event_at + 100)
    assert e.kv_live  # idle: nothing was sent, so no event is expected
    e.awaiting_events_since = e.kv_event_at + 50
    sub.check_silence(e, now=e.awaiting_events_since + 4)
    assert e.kv_live
    sub.check_silence(e, now=e.awaiting_events_since + 6)
    assert not e.kv_live and sub.resets == 1


def test_older_array_shaped_events_are_understood() -> None:
    index = PreciseIndex()
    ids = [random.Random(1).randrange(1000) for _ in range(16)]
    n = apply_batch(index, "e", [["BlockStored", [9], None, ids, 16, None, "GPU"], ["Mystery", 1]])
    assert n == 1 and index.match(token_keys(ids, BS), ["e"]) == [1]
    assert apply_batch(index, "e", [["BlockRemoved", [9], "GPU"]]) == 1 and index.blocks("e") == 0
