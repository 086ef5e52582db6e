"""The simulator as a first-time user meets it: it says what its cold start is and how to skip it, and
greedy decoding (temperature 0) repeats itself as vLLM's does."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import SimFactory, free_port, wait_ready


def test_cold_start_imitation_is_announced_with_the_way_to_skip_it(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "sim.log"
    cmd = [sys.executable, "-m", "fleetgate", "sim", "--port", str(port), "--startup-time", "30"]
    with log.open("wb") as out, (tmp_path / "err.log").open("wb") as err:
        proc = subprocess.Popen([*cmd, "--time-scale", "100"], stdout=out, stderr=err)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    said = (tmp_path / "err.log").read_text().splitlines()[0]
    assert said.startswith("fleetgate sim: imitating vLLM's cold start (0.3 s, profile h200-llama-3.1-8b)")
    assert f"http://127.0.0.1:{port}" in said and "--startup-time 0 skips it" in said


def test_temperature_zero_repeats_the_same_text(sim_factory: SimFactory) -> None:
    sim = sim_factory("--served-model-name", "m")
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three rivers."}]

    def chat(temperature: float, n: int = 1) -> list[str]:
        reply = client.chat.completions.create(
            model="m",
            messages=messages,
            temperature=temperature,
            max_tokens=24,
            n=n,
        )
        return [c.message.content or "" for c in reply.choices]

    first = chat(0)
    assert first[0] and chat(0) == first
    assert chat(0, n=3) == first * 3  # greedy: every choice is the same
    assert len({chat(1.0)[0] for _ in range(3)}) > 1  # sampling still varies
    text = [
        client.completions.create(model="m", prompt="Once upon", temperature=0, max_tokens=12).choices[0].text
        for _ in range(2)
    ]
    assert text[0] == text[1]
