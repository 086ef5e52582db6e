"""The deterministic tokenizer: realistic counts, stable ids, prefix-stable chat rendering."""

from __future__ import annotations

import random
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from fleetgate.tokenizer import IM_END, IM_START, TextSampler, Tokenizer, render_chat

PROSE = (
    "Everything fleetgate does is about a fleet of vLLM servers, and no GPU is available in tests or CI. "
    "The simulator is the fake vLLM that every test, benchmark, demo and the capacity planner stand on. "
    "Our users start from RunPod Serverless and Cloud Run. Their top complaints: the first request after "
    "idle is lost or times out, cold starts are slow and unpredictable, failing workers restart in a loop."
)
CHINESE = "台南是台灣最古老的城市，有很多歷史古蹟和美食，例如安平古堡、赤崁樓、牛肉湯和擔仔麵。" * 4


def test_english_prose_is_about_four_characters_per_token() -> None:
    ratio = len(PROSE) / Tokenizer().count(PROSE)
    assert 3.5 <= ratio <= 4.8


def test_chinese_is_one_to_one_and_a_half_characters_per_token() -> None:
    ratio = len(CHINESE) / Tokenizer().count(CHINESE)
    assert 1.0 <= ratio <= 1.5


def test_ids_are_the_same_in_another_process() -> None:
    code = (
        "from fleetgate.tokenizer import Tokenizer\n"
        "print(list(Tokenizer().encode('Plan two days in Tainan.')))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other.strip() == str(list(Tokenizer().encode("Plan two days in Tainan.")))


def test_vocab_bounds_and_reserved_ids() -> None:
    tok = Tokenizer(vocab_size=32000)
    ids = tok.encode(PROSE + CHINESE)
    assert all(256 <= i < 32000 for i in ids)


@given(st.text(max_size=200))
def test_decode_inverts_encode(text: str) -> None:
    tok = Tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_chat_rendering_keeps_shared_prefixes_identical() -> None:
    tok = Tokenizer()
    system = {"role": "system", "content": PROSE}
    a = render_chat(tok, [system, {"role": "user", "content": "Plan two days in Tainan."}])
    b = render_chat(tok, [system, {"role": "user", "content": "What about Kyoto?"}])
    head = render_chat(tok, [system], add_generation_prompt=False)
    assert a[: len(head)] == b[: len(head)] == head
    assert a[0] == IM_START and IM_END in a
    assert a[-3:] != b[-3:] or a != b


def test_tools_make_the_prompt_longer() -> None:
    tok = Tokenizer()
    msgs = [{"role": "user", "content": "找台南兩天一夜的影片"}]
    tool = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
    assert len(render_chat(tok, msgs, [tool])) > len(render_chat(tok, msgs)) + 40


def test_sampler_is_deterministic_per_seed_and_zipfian() -> None:
    tok = Tokenizer()
    sampler = TextSampler(tok)
    a = [sampler.draw(random.Random(3)) for _ in range(1)]
    b = [sampler.draw(random.Random(3)) for _ in range(1)]
    assert a == b
    rng = random.Random(1)
    draws = [sampler.draw(rng) for _ in range(5000)]
    top = max(set(draws), key=draws.count)
    assert draws.count(top) > 250  # the head of the distribution dominates, so stop strings occur
    text = tok.decode(draws)
    assert 3.5 <= len(text) / len(draws) <= 7.0
