"""What one routing decision costs at long prompts: hashing (tokenization included) plus the pick.

    python benchmarks/picker_cost.py [--tokens 100000] [--endpoints 8] [--repeat 20]

Cases, each the median of `--repeat` runs, in milliseconds of this process's CPU:
- token ids: a `/v1/completions` prompt of token ids (hashing only, no tokenizer);
- text, tokenizer none: a chat whose one user message is that long, hashed as text;
- text, tokenizer builtin, cold: the same chat tokenized by the builtin tokenizer, never seen before;
- multi-turn, builtin: a conversation of that length plus a new turn (the history was hashed before);
and the pick itself over `--endpoints` endpoints whose indexes hold the prompt (the longest walk).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from fleetgate.api.gateway import routing_settings
from fleetgate.config import parse_config
from fleetgate.fleet.prefix_index import ApproxIndex
from fleetgate.fleet.sessions import SessionTable
from fleetgate.fleet.state import Endpoint, PoolState
from fleetgate.routing.prompt import PromptHasher
from fleetgate.routing.request import RouteRequest
from fleetgate.routing.router import PoolRouter

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from",
         "travel", "hotel", "night", "booking", "city"]  # fmt: skip


def text(tokens: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(tokens // 2))


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--endpoints", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    rng = random.Random(0)
    n, repeat = args.tokens, args.repeat
    ids = [rng.randrange(256, 128_000) for _ in range(n)]
    none, builtin = PromptHasher("none"), PromptHasher("builtin")
    rows: list[tuple[str, float]] = []
    rows.append(("token ids", median_ms(lambda: none.info("completions", {"prompt": ids}, None), repeat)))

    def fresh_chat() -> dict[str, object]:
        return {"messages": [{"role": "user", "content": text(n, rng)}]}

    chats = [fresh_chat() for _ in range(repeat)]
    it = iter(chats)
    rows.append(("text, tokenizer none", median_ms(lambda: none.info("chat", next(it), None), repeat)))
    it = iter(chats)
    cold = median_ms(lambda: builtin.info("chat", next(it), None), repeat)
    rows.append(("text, tokenizer builtin, cold", cold))
    history = [
        {"role": "system", "content": text(n // 2, rng)},
        {"role": "user", "content": text(n // 2, rng)},
    ]
    builtin.info("chat", {"messages": history}, None)
    turns = iter(range(10**9))

    def next_turn() -> object:
        i = next(turns)
        body = {"messages": [*history, {"role": "assistant", "content": f"answer {i}"},
                             {"role": "user", "content": f"and then {i}?"}]}  # fmt: skip
        return builtin.info("chat", body, None)

    rows.append(("multi-turn, builtin (new turn only)", median_ms(next_turn, repeat)))

    pc = parse_config("pools: [{name: p, endpoints: [http://x]}]").pools[0]
    state = PoolState("p", [], ApproxIndex(pc.routing.index_blocks), SessionTable(pc.routing.session.ttl))
    for i in range(args.endpoints):
        e = Endpoint(f"e{i}", f"http://e{i}", "p")
        e.probe_ok()
        state.endpoints.append(e)
    info = builtin.info("chat", chats[0], None)
    assert info is not None
    for e in state.endpoints:
        state.approx.record(e.name, info.keys)
    router = PoolRouter(state, routing_settings(pc))
    rows.append(
        (
            f"pick over {args.endpoints} endpoints, {len(info.keys)} blocks held",
            median_ms(lambda: router.picker.pick(RouteRequest("m", keys=info.keys), state.endpoints), repeat),
        )
    )
    print(f"# {n:,}-token prompts, median of {repeat}, CPU ms")
    for name, ms in rows:
        print(f"{name:<45} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
