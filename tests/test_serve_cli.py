"""`fleetgate serve`, the one-liner beside `vllm serve`: deterministic failures end it with one line in the
command line's words (exit 1, no retries), `--api-key` and `--chat-template` as vLLM has them, and
`fleetgate status` pointing the way when it cannot reach the gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from fleetgate.api.status import admin_url, fetch_fleet
from fleetgate.engines.embedded import loader
from fleetgate.engines.embedded.__main__ import parse_args
from fleetgate.engines.vllm import ENGINE as VLLM
from tests.conftest import free_port, until


def serve(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    port, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "fleetgate", "serve", *args, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--admin-port", str(admin)]
    # No GPU may be borrowed from the developer's machine: this is the machine without one.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_vllm_without_a_gpu_exits_1_with_one_line_in_flag_words(tmp_path: Path) -> None:
    # The quick start's GPU command, run where there is no GPU.
    result = serve(
        tmp_path, "Qwen/Qwen2.5-7B-Instruct", "--engine", "vllm", "--served-model-name", "qwen",
        "--", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    )  # fmt: skip
    assert result.returncode == 1
    line = last_line(result.stderr)
    assert line.startswith("error: ") and "--engine embedded" in line
    assert "Traceback" not in result.stderr


def test_missing_model_directory_is_not_retried(tmp_path: Path) -> None:
    result = serve(tmp_path, str(tmp_path / "no-such-model"), "--engine", "embedded")
    assert result.returncode == 1
    assert last_line(result.stderr) == f"error: model directory {tmp_path / 'no-such-model'} does not exist"
    log = (tmp_path / "fleetgate-logs" / "default-1.log").read_text()
    assert log.count("---- fleetgate: starting") == 1  # one start, no retries


def test_a_flag_the_engine_rejects_ends_serve(tmp_path: Path) -> None:
    result = serve(tmp_path, "h200-llama-3.1-8b", "--engine", "sim", "--", "--no-such-flag")
    assert result.returncode == 1
    line = last_line(result.stderr)
    assert line.startswith("error: the simulator cannot start: ") and "--no-such-flag" in line


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    port, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "fleetgate", "serve", "h200-llama-3.1-8b", "--engine", "sim"]
    cmd += [
        "--served-model-name",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--admin-port",
        str(admin),
    ]
    cmd += ["--api-key", "sk-local", "--", "--startup-time", "0"]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{admin}", proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_api_key_is_required_like_vllm(served: tuple[str, str, subprocess.Popen[bytes]]) -> None:
    url, admin, _ = served
    good = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-local", max_retries=0, timeout=60)
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    until(lambda: _answers(f"{url}/health"), "the gateway to listen", within=30)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    reply = good.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content
    # `status --admin host:port` (no scheme) reads the same fleet.
    assert fetch_fleet(admin)["pools"]["default"]["workers"][0]["state"] == "ready"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def test_status_without_a_gateway_says_what_to_do(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "fleetgate", "status", "--admin", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    line = last_line(result.stderr)
    assert line.startswith(f"error: nothing answers at http://127.0.0.1:{port}: is fleetgate running")
    assert "--admin" in line and "Traceback" not in result.stderr


def test_admin_addresses_without_a_scheme() -> None:
    assert admin_url("127.0.0.1:8001") == "http://127.0.0.1:8001"
    assert admin_url(":8101") == "http://127.0.0.1:8101"
    assert admin_url("https://gw.internal:9000/") == "https://gw.internal:9000"


def test_embedded_engine_takes_vllms_chat_template(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    settings = parse_args(["--demo", "--chat-template", str(template)])
    assert settings.chat_template == str(template)
    assert loader.chat_template(str(template)) == template.read_text()
    assert loader.chat_template("{{ messages[0]['content'] }}") == "{{ messages[0]['content'] }}"
    with pytest.raises(loader.LoadError, match="--chat-template"):
        loader.chat_template(str(tmp_path / "missing.jinja"))


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        (
            "ValueError: Free memory on device (6.92/79.1 GiB) on startup is less than desired GPU memory "
            "utilization (0.92, 72.77 GiB). Decrease GPU memory utilization or reduce GPU memory used by "
            "other processes.",
            "not enough free GPU memory at start: 6.92/79.1 GiB free, vLLM wants 72.77 GiB",
        ),
        (
            # vLLM 0.26 names the device (vllm/v1/worker/utils.py, request_memory).
            "(EngineCore pid=1342) ValueError: Free memory on device cuda:0 (68.9/139.8 GiB) on startup "
            "is less than desired GPU memory utilization (0.9, 125.82 GiB). Decrease GPU memory "
            "utilization or reduce GPU memory used by other processes.",
            "not enough free GPU memory at start: 68.9/139.8 GiB free, vLLM wants 125.82 GiB",
        ),
        (
            "ValueError: To serve at least one request with the models's max seq len (131072), (16.00 GiB KV "
            "cache is needed, which is larger than the available KV cache memory (3.42 GiB). Based on the "
            "available memory, the estimated maximum model length is 28000. Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
            "the KV cache for a 131072-token context does not fit",
        ),
        (
            "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
            "when initializing the engine.",
            "no GPU memory is left for the KV cache",
        ),
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total "
            "capacity of 79.19 GiB of which 1.01 GiB is free.",
            "the GPU ran out of memory",
        ),
        ("RuntimeError: Failed to infer device type", "vLLM found no usable NVIDIA GPU"),
        ("vllm serve: error: unrecognized arguments: --chat-templat x", "vLLM rejected its command line"),
    ],
)
def test_vllm_start_failures_are_named_with_what_to_do(line: str, expect: str) -> None:
    message = VLLM.diagnose(line)
    assert message is not None and message.startswith(expect)
    if "memory" in expect or "KV cache" in expect:
        assert "--max-model-len" in message and "--gpu-memory-utilization" in message


def test_ordinary_vllm_lines_are_not_failures() -> None:
    data = Path(__file__).parent / "data"
    for name in ("startup_log_default.txt", "startup_log_eager_tools.txt"):
        for line in (data / name).read_text().splitlines():
            assert VLLM.diagnose(line) is None, line
    assert VLLM.diagnose("RuntimeError: Engine core initialization failed. See root cause above.") is None
