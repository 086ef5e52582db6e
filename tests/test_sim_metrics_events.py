"""The simulator's `/metrics` page and ZMQ KV-cache events against what vLLM 0.26 exported (tests/data).

Families, types, label names and histogram buckets must be those of the recorded pages for the same flags;
counters must move with the traffic the test sends. KV events are read with a real ZMQ subscriber and
compared with the recorded frames and event maps.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import json
import random
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import msgpack
import openai
import pytest
import zmq
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SimFactory, SimProcess, free_port, spawn_sim

DATA = Path(__file__).parent / "data"
MODEL = "llama-8b"
BASE_FLAGS = ("--served-model-name", MODEL, "--time-scale", "20", "--seed", "7")
TOOL_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
IGNORE_EOS = {"ignore_eos": True}


# ---- simulators --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    sim = spawn_sim(tmp_path_factory.mktemp("plain"), *BASE_FLAGS)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def tools_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    sim = spawn_sim(tmp_path_factory.mktemp("tools"), *BASE_FLAGS, *TOOL_FLAGS)
    yield sim
    sim.stop()


def _client(sim: SimProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)


# ---- parsed pages ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    type: str
    labels: frozenset[str]
    # histogram buckets by `le`, as written
    buckets: tuple[str, ...]


def families(text: str, prefix: str = "vllm:") -> dict[str, Family]:
    """Families as prometheus_client's parser names them (it folds `_total` into counter names)."""
    out: dict[str, Family] = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith(prefix):
            continue
        labels = frozenset(k for s in fam.samples for k in s.labels if k != "le")
        les: list[str] = []
        for s in fam.samples:
            if s.name.endswith("_bucket") and s.labels["le"] not in les:
                les.append(s.labels["le"])
        out[fam.name] = Family(fam.type, labels, tuple(les))
    return out


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by (sample name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(sim: SimProcess) -> str:
    resp = httpx.get(sim.url + "/metrics", timeout=10)
    assert resp.status_code == 200
    return resp.text


def value(page: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    key = (name, frozenset({"engine": "0", "model_name": MODEL, **labels}.items()))
    assert key in page, f"no sample {name}{labels}"
    return page[key]


RECORDED_PLAIN = families((DATA / "metrics_after_load.txt").read_text())
RECORDED_PRESSURE = families((DATA / "metrics_kv_pressure.txt").read_text())
LORA_SLEEP: dict[str, Any] = json.loads((DATA / "lora_sleep.json").read_text())
RECORDED_LORA = families("\n".join(LORA_SLEEP["metrics_after_lora"]) + "\n")


def test_recordings_agree_with_each_other() -> None:
    # The pressure run had the tool flags: its page is the plain one plus the tool-parser counter.
    extra = set(RECORDED_PRESSURE) - set(RECORDED_PLAIN)
    assert extra == {"vllm:tool_call_parser_invocations", "vllm:tool_call_parser_invocations_created"}
    assert set(RECORDED_PLAIN) <= set(RECORDED_PRESSURE)
    assert families((DATA / "metrics_idle.txt").read_text()).keys() == RECORDED_PLAIN.keys()
    assert "vllm:lora_requests_info" in RECORDED_LORA


def _assert_same_families(sim: Mapping[str, Family], expected: Mapping[str, Family]) -> None:
    assert sim.keys() == expected.keys(), (
        f"missing {sorted(expected.keys() - sim.keys())}, extra {sorted(sim.keys() - expected.keys())}"
    )
    for name, fam in expected.items():
        assert sim[name].type == fam.type, name
        assert sim[name].labels == fam.labels, name
        assert sim[name].buckets == fam.buckets, name


def test_plain_server_exports_recorded_families(plain_sim: SimProcess) -> None:
    _assert_same_families(families(scrape(plain_sim)), RECORDED_PLAIN)


def test_tool_server_adds_the_tool_parser_family(tools_sim: SimProcess) -> None:
    expected = dict(RECORDED_PLAIN)
    for name in set(RECORDED_PRESSURE) - set(RECORDED_PLAIN):
        expected[name] = RECORDED_PRESSURE[name]
    _assert_same_families(families(scrape(tools_sim)), expected)
    page = samples(scrape(tools_sim))
    rec = samples((DATA / "metrics_kv_pressure.txt").read_text())

    def label_sets(
        p: Mapping[tuple[str, frozenset[tuple[str, str]]], float],
    ) -> set[frozenset[tuple[str, str]]]:
        return {labels for (n, labels) in p if n == "vllm:tool_call_parser_invocations_total"}

    assert label_sets(page) == label_sets(rec)


def test_histogram_buckets_are_recorded_ones(plain_sim: SimProcess) -> None:
    sim = families(scrape(plain_sim))
    hists = {n: f for n, f in RECORDED_PLAIN.items() if f.type == "histogram"}
    assert len(hists) == 15
    for name, fam in hists.items():
        assert sim[name].buckets == fam.buckets, name
        assert fam.buckets[-1] == "+Inf"


def test_cache_config_info_labels_are_vllms(plain_sim: SimProcess) -> None:
    """Same profile as the recording (H200, 8B shapes, 57,606 blocks): every label value matches."""
    rec = samples((DATA / "metrics_after_load.txt").read_text())
    sim = samples(scrape(plain_sim))
    (rec_labels,) = [dict(lb) for (n, lb) in rec if n == "vllm:cache_config_info"]
    (sim_labels,) = [dict(lb) for (n, lb) in sim if n == "vllm:cache_config_info"]
    assert sim_labels == rec_labels


def test_histograms_are_cumulative(plain_sim: SimProcess) -> None:
    with _client(plain_sim) as client:
        client.completions.create(model=MODEL, prompt="warm the histograms", max_tokens=3)
    text = scrape(plain_sim)
    for fam in text_string_to_metric_families(text):
        if fam.type != "histogram" or not fam.name.startswith("vllm:"):
            continue
        counts = [s.value for s in fam.samples if s.name.endswith("_bucket")]
        (total,) = [s.value for s in fam.samples if s.name.endswith("_count")]
        assert counts == sorted(counts), fam.name
        assert counts[-1] == total, fam.name


# ---- counters under traffic --------------------------------------------------------------------------------
@dataclass
class Sent:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish: dict[str, int] = field(default_factory=dict)

    def add(self, prompt: int, completion: int, reasons: list[str]) -> None:
        self.requests += len(reasons)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        for r in reasons:
            self.finish[r] = self.finish.get(r, 0) + 1


ENGLISH: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Plan two days in Kyoto: temples in the morning, markets at night."}
]
CHINESE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "找台南兩天一夜的影片，包含美食和古蹟。"}
]


def _traffic(client: openai.OpenAI) -> Sent:
    sent = Sent()
    for max_tokens, messages in ((5, ENGLISH), (9, CHINESE), (13, ENGLISH)):
        r = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=max_tokens, extra_body=IGNORE_EOS
        )
        assert r.usage is not None
        sent.add(r.usage.prompt_tokens, r.usage.completion_tokens, [c.finish_reason for c in r.choices])
    for seed in (1, 2, 3):  # natural ends: most stop on their own before 400 tokens
        r = client.chat.completions.create(model=MODEL, messages=ENGLISH, max_tokens=400, seed=seed)
        assert r.usage is not None
        sent.add(r.usage.prompt_tokens, r.usage.completion_tokens, [c.finish_reason for c in r.choices])
    for max_tokens in (4, 11):
        stream = client.chat.completions.create(
            model=MODEL,
            messages=CHINESE,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=IGNORE_EOS,
        )
        reasons: list[str] = []
        for chunk in stream:
            reasons += [c.finish_reason for c in chunk.choices if c.finish_reason is not None]
            if chunk.usage is not None:
                sent.add(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, reasons)
    c = client.completions.create(
        model=MODEL, prompt=[11, 12, 13, 14, 15, 16], max_tokens=6, extra_body=IGNORE_EOS
    )
    assert c.usage is not None
    sent.add(c.usage.prompt_tokens, c.usage.completion_tokens, [ch.finish_reason for ch in c.choices])
    return sent


def test_counters_follow_traffic(plain_sim: SimProcess) -> None:
    before = samples(scrape(plain_sim))
    with _client(plain_sim) as client:
        sent = _traffic(client)
    after = samples(scrape(plain_sim))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert sent.requests == 9 and sum(sent.finish.values()) == 9
    for reason in ("stop", "length", "abort", "error", "repetition"):
        assert delta("vllm:request_success_total", finished_reason=reason) == sent.finish.get(reason, 0), (
            reason
        )
    assert delta("vllm:generation_tokens_total") == sent.completion_tokens
    assert delta("vllm:prompt_tokens_total") == sent.prompt_tokens
    assert delta("vllm:request_prompt_tokens_sum") == sent.prompt_tokens
    assert delta("vllm:request_generation_tokens_sum") == sent.completion_tokens
    for hist in (
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:request_params_max_tokens",
        "vllm:request_params_n",
        "vllm:request_queue_time_seconds",
    ):
        assert delta(f"{hist}_count") == sent.requests, hist
    assert delta("vllm:time_to_first_token_seconds_sum") > 0
    # Every prompt token was looked up in the prefix cache and either hit or computed.
    assert delta("vllm:prefix_cache_queries_total") == sent.prompt_tokens
    hits = delta("vllm:prefix_cache_hits_total")
    assert 0 <= hits <= sent.prompt_tokens
    assert delta("vllm:prompt_tokens_by_source_total", source="local_cache_hit") == hits
    assert delta("vllm:prompt_tokens_by_source_total", source="local_compute") == sent.prompt_tokens - hits
    assert delta("vllm:prompt_tokens_cached_total") == hits
    # Idle again: nothing running or waiting, every block free (cached blocks count as free).
    assert value(after, "vllm:num_requests_running") == 0
    assert value(after, "vllm:num_requests_waiting") == 0
    assert value(after, "vllm:kv_cache_usage_perc") == 0


def test_repeated_prompt_hits_the_prefix_cache(plain_sim: SimProcess) -> None:
    prompt = [random.Random(41).randrange(1000, 100000) for _ in range(100)]
    with _client(plain_sim) as client:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
        before = samples(scrape(plain_sim))
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    after = samples(scrape(plain_sim))
    # 6 full blocks of 16 are cached; vLLM never serves the whole prompt from cache, 96 < 100 so all 6 hit.
    hits = value(after, "vllm:prefix_cache_hits_total") - value(before, "vllm:prefix_cache_hits_total")
    assert hits == 96


def test_stop_string_request_is_counted_as_stopped(plain_sim: SimProcess) -> None:
    before = samples(scrape(plain_sim))
    with _client(plain_sim) as client:
        r = client.chat.completions.create(
            model=MODEL, messages=ENGLISH, max_tokens=200, seed=0, stop=[" the"], extra_body=IGNORE_EOS
        )
    after = samples(scrape(plain_sim))
    assert r.choices[0].finish_reason == "stop" and r.usage is not None

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vllm:request_success_total", finished_reason="stop") == 1
    assert delta("vllm:request_success_total", finished_reason="length") == 0
    assert delta("vllm:generation_tokens_total") == r.usage.completion_tokens


# ---- LoRA --------------------------------------------------------------------------------------------------
LORA_FLAGS = ("--enable-lora", "--max-loras", "2", "--lora-modules", "food-review=/tmp/lora/food-review")


def _lora_rows(text: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        if fam.name == "vllm:lora_requests_info"
        for s in fam.samples
    ]


def test_lora_server_adds_lora_requests_info(sim_factory: SimFactory) -> None:
    sim = sim_factory(*BASE_FLAGS, *LORA_FLAGS)
    expected = dict(RECORDED_PLAIN)
    expected["vllm:lora_requests_info"] = RECORDED_LORA["vllm:lora_requests_info"]
    with _client(sim) as client:
        client.completions.create(model="food-review", prompt="a review of", max_tokens=2)
    page = scrape(sim)
    _assert_same_families(families(page), expected)
    assert RECORDED_LORA["vllm:lora_requests_info"].type == "gauge"
    assert all(labels["max_lora"] == "2" for labels, _ in _lora_rows(page))


def test_lora_requests_info_lists_running_adapter(sim_factory: SimFactory) -> None:
    sim = sim_factory(*BASE_FLAGS, *LORA_FLAGS)
    with _client(sim) as client:
        stream = client.completions.create(
            model="food-review", prompt="a review of", max_tokens=3000, stream=True, extra_body=IGNORE_EOS
        )
        next(iter(stream))  # the adapter's request is now running
        rows = _lora_rows(scrape(sim))
        stream.close()
    current, stamp = max(rows, key=lambda r: r[1])
    assert current["running_lora_adapters"] == "food-review"
    assert abs(stamp - time.time()) < 60, "the value is a Unix timestamp"
    deadline = time.monotonic() + 5
    while True:
        current, _ = max(_lora_rows(scrape(sim)), key=lambda r: r[1])
        if current["running_lora_adapters"] == "" or time.monotonic() > deadline:
            break
    assert current == {"max_lora": "2", "running_lora_adapters": "", "waiting_lora_adapters": ""}


def test_lora_requests_info_is_empty_before_any_request(sim_factory: SimFactory) -> None:
    # Recorded (lora_sleep.json "metrics0"): before any request the family has HELP/TYPE and no sample.
    recorded = [line for line in LORA_SLEEP["metrics0"] if "lora_requests_info" in line]
    assert recorded and all(line.startswith("#") for line in recorded)
    sim = sim_factory(*BASE_FLAGS, *LORA_FLAGS)
    assert _lora_rows(scrape(sim)) == []


# ---- KV events ---------------------------------------------------------------------------------------------
@dataclass
class Frame:
    seq: int
    ts: float
    events: list[dict[str, Any]]


class Subscriber:
    """A ZMQ SUB socket on the simulator's KV-event endpoint, keeping every frame it receives."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"kv")
        self.sock.connect(endpoint)
        self.frames: list[Frame] = []

    def poll(self, timeout: float) -> Frame | None:
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        parts = self.sock.recv_multipart()
        assert len(parts) == 3, "frames are [topic, seq, payload]"
        topic, seq, payload = parts
        assert topic == b"kv" and len(seq) == 8
        batch = msgpack.unpackb(payload, raw=False)
        assert isinstance(batch, list) and len(batch) == 3, batch
        ts, events, dp_rank = batch
        assert isinstance(ts, float) and abs(ts - time.time()) < 60
        assert dp_rank == 0
        assert isinstance(events, list) and events
        frame = Frame(int.from_bytes(seq, "big"), ts, events)
        self.frames.append(frame)
        return frame

    def events(self) -> list[dict[str, Any]]:
        return [e for f in self.frames for e in f.events]

    def until(self, done: Any, timeout: float = 5.0) -> None:
        """Receive frames until `done(self)` holds."""
        deadline = time.monotonic() + timeout
        while not done(self):
            left = deadline - time.monotonic()
            assert left > 0, f"condition not met; events so far: {self.events()!r:.2000}"
            self.poll(left)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _kv_config(port: int) -> str:
    return json.dumps(
        {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://127.0.0.1:{port}",
            "topic": "kv",
        }
    )


def _connect(sim: SimProcess, port: int, rng: random.Random) -> Subscriber:
    """Subscribe, then send small requests until one's events arrive: the subscription is live from there."""
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    with _client(sim) as client:
        for _ in range(40):
            prompt = [rng.randrange(1000, 100000) for _ in range(32)]
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
            if sub.poll(0.25) is not None:
                break
        else:
            raise AssertionError("no KV event reached the subscriber")
    # Whatever the first live request published is in; drop the warm-up frames.
    sub.until(lambda s: any(e.get("token_ids") == prompt for e in s.events()))
    sub.frames.clear()
    return sub


@dataclass
class KVSim:
    sim: SimProcess
    sub: Subscriber


def _kv_sim(tmp: Path, *flags: str) -> KVSim:
    port = free_port()
    sim = spawn_sim(
        tmp, *BASE_FLAGS, "--kv-events-config", _kv_config(port), *flags, env={"VLLM_SERVER_DEV_MODE": "1"}
    )
    try:
        sub = _connect(sim, port, random.Random(port))
    except BaseException:
        sim.stop()
        raise
    return KVSim(sim, sub)


@pytest.fixture(scope="module")
def kv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVSim]:
    k = _kv_sim(tmp_path_factory.mktemp("kv"))
    yield k
    k.sub.close()
    k.sim.stop()


def _recorded_stored() -> list[dict[str, Any]]:
    """Recorded events; the recorder cut the reprs of long frames, so only whole ones are read."""
    out: list[dict[str, Any]] = []
    for f in json.loads((DATA / "kv_events.json").read_text()):
        try:
            batch = ast.literal_eval(f["decoded_full_repr"])
        except SyntaxError:
            continue
        out += batch[1]
    return out


def _recorded_removed() -> dict[str, Any]:
    """The first recorded BlockRemoved map (its frames' reprs are cut, but each map is short and whole)."""
    for f in json.loads((DATA / "kv_events_eviction.json").read_text()):
        if "BlockRemoved" in f["types"]:
            found = re.search(r"\{'type': 'BlockRemoved'[^{}]*\}", f["batch_repr"])
            assert found is not None
            return cast(dict[str, Any], ast.literal_eval(found.group(0)))
    raise AssertionError("the eviction recording has no BlockRemoved")


def _types(event: Mapping[str, Any]) -> dict[str, str]:
    def name(v: Any) -> str:
        if isinstance(v, list):
            return "list[" + ",".join(sorted({name(x) for x in v})) + "]"
        return "null" if v is None else type(v).__name__

    return {k: name(v) for k, v in event.items()}


def _assert_seq_consecutive(frames: list[Frame]) -> None:
    seqs = [f.seq for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def _stored_with(tokens: list[int]) -> Any:
    return lambda s: any(e["type"] == "BlockStored" and e["token_ids"] == tokens for e in s.events())


def test_block_stored_matches_recording_and_repeats_recompute_last_block(kv: KVSim) -> None:
    recorded = _recorded_stored()
    first_rec = recorded[0]
    assert first_rec["parent_block_hash"] is None
    prompt = [random.Random(5).randrange(1000, 100000) for _ in range(32)]  # exactly two blocks
    with _client(kv.sim) as client:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
        kv.sub.until(_stored_with(prompt))
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
        kv.sub.until(_stored_with(prompt[16:]))
    stored = [e for e in kv.sub.events() if e["type"] == "BlockStored"]
    first = next(e for e in stored if e["token_ids"] == prompt)
    again = next(e for e in stored if e["token_ids"] == prompt[16:])
    # The keys and value types vLLM publishes.
    assert set(first) == set(first_rec)
    assert _types(first) == _types(first_rec)
    second_rec = next(e for e in recorded if e["parent_block_hash"] is not None)
    assert _types(again) == _types(second_rec)
    for e in (first, again):
        assert e["block_size"] == 16 and e["medium"] == "GPU" and e["group_idx"] == 0
        assert e["kv_cache_spec_kind"] == "full_attention" and e["lora_id"] is None and e["lora_name"] is None
        assert len(e["token_ids"]) == e["block_size"] * len(e["block_hashes"])
        assert e["extra_keys"] == [None] * len(e["block_hashes"])
        assert all(0 <= h < 2**64 for h in e["block_hashes"])
    assert len(first["block_hashes"]) == 2
    # vLLM recomputes the last block of a fully cached prompt and stores it again, chained to the first.
    assert again["block_hashes"] == [first["block_hashes"][1]]
    assert again["parent_block_hash"] == first["block_hashes"][0]
    _assert_seq_consecutive(kv.sub.frames)


def test_long_output_stores_chained_blocks(kv: KVSim) -> None:
    prompt = [random.Random(6).randrange(1000, 100000) for _ in range(40)]
    kv.sub.frames.clear()
    with _client(kv.sim) as client:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=60, extra_body=IGNORE_EOS)
    # 40 + 60 = 100 tokens: six full blocks, published as they fill, each chained to the one before.
    kv.sub.until(lambda s: sum(len(e["block_hashes"]) for e in s.events()) >= 6)
    stored = [e for e in kv.sub.events() if e["type"] == "BlockStored"]
    chain = [h for e in stored for h in e["block_hashes"]]
    assert len(chain) == 6 and stored[0]["parent_block_hash"] is None
    assert stored[0]["token_ids"][:32] == prompt[:32]
    for prev, e in itertools.pairwise(stored):
        assert e["parent_block_hash"] == prev["block_hashes"][-1]
    for e in stored:
        assert len(e["token_ids"]) == e["block_size"] * len(e["block_hashes"])
    _assert_seq_consecutive(kv.sub.frames)


def test_reset_prefix_cache_publishes_nothing(kv: KVSim) -> None:
    resp = httpx.post(kv.sim.url + "/reset_prefix_cache", timeout=5)
    assert resp.status_code == 200 and resp.json() == {"success": True}
    last = kv.sub.frames[-1].seq if kv.sub.frames else None
    prompt = [random.Random(7).randrange(1000, 100000) for _ in range(16)]
    with _client(kv.sim) as client:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    kv.sub.until(_stored_with(prompt))
    # Observed on vLLM 0.26: no AllBlocksCleared; the next frame is the next request's BlockStored.
    assert {e["type"] for e in kv.sub.events()} == {"BlockStored"}
    if last is not None:
        _assert_seq_consecutive(kv.sub.frames)


@pytest.fixture(scope="module")
def evict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVSim]:
    """64 blocks of 16 for a 1024-token context: one ~900-token prompt fills the cache."""
    k = _kv_sim(
        tmp_path_factory.mktemp("evict"), "--num-gpu-blocks-override", "64", "--max-model-len", "1024"
    )
    yield k
    k.sub.close()
    k.sim.stop()


async def _burst(url: str, prompts: list[list[int]]) -> list[str | None]:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        outs = await asyncio.gather(
            *(
                client.completions.create(model=MODEL, prompt=p, max_tokens=8, extra_body=IGNORE_EOS)
                for p in prompts
            )
        )
    return [o.choices[0].finish_reason for o in outs]


def test_eviction_publishes_block_removed(evict: KVSim) -> None:
    # Forget the warm-up's blocks (no event, as vLLM): every later removal must name a hash we saw stored.
    resp = httpx.post(evict.sim.url + "/reset_prefix_cache", timeout=5)
    assert resp.json() == {"success": True}
    rng = random.Random(9)
    prompts = [[rng.randrange(1000, 100000) for _ in range(900)] for _ in range(4)]
    assert asyncio.run(_burst(evict.sim.url, prompts)) == ["length"] * 4

    def done(s: Subscriber) -> bool:
        firsts = {tuple(e["token_ids"][:16]) for e in s.events() if e["type"] == "BlockStored"}
        return all(tuple(p[:16]) in firsts for p in prompts)

    evict.sub.until(done)
    events = evict.sub.events()
    removed = [e for e in events if e["type"] == "BlockRemoved"]
    assert removed, "900-token prompts cannot share 64 blocks without evicting"
    rec = _recorded_removed()
    for e in removed:
        assert set(e) == set(rec)
        assert _types(e) == _types(rec)
        assert e["medium"] == "GPU" and e["group_idx"] == 0
    stored_so_far: set[int] = set()
    for e in events:
        if e["type"] == "BlockStored":
            stored_so_far.update(e["block_hashes"])
        else:
            assert set(e["block_hashes"]) <= stored_so_far, "a removed block must have been stored first"
    _assert_seq_consecutive(evict.sub.frames)


def test_cache_config_info_follows_block_override(evict: KVSim) -> None:
    # Recorded at 512 blocks and an 8192 context (concurrency 1.0); 64 blocks and 1024 give the same ratio.
    rec_page = samples((DATA / "metrics_kv_pressure.txt").read_text())
    (rec_labels,) = [dict(lb) for (n, lb) in rec_page if n == "vllm:cache_config_info"]
    (sim_labels,) = [dict(lb) for (n, lb) in samples(scrape(evict.sim)) if n == "vllm:cache_config_info"]
    rec_labels |= {"num_gpu_blocks": "64", "num_gpu_blocks_override": "64", "kv_cache_size_tokens": "1024"}
    assert sim_labels == rec_labels
