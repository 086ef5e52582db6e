"""docs/quickstart.md, walked as a user walks it: every command in it is run here or by
.ci/check-make-run.sh (which `.ci/run` calls after `make test`), so the page cannot drift from the product."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from fleetgate.engines.embedded import demo
from tests.conftest import free_port, until

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "docs" / "quickstart.md"
CHECK_MAKE_RUN = (ROOT / ".ci" / "check-make-run.sh").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", QUICKSTART.read_text(), re.S)


def commands() -> list[str]:
    """Each shell command of the page: continuation lines joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                out.append(re.sub(r"\s+", " ", line))
    return out


def command(prefix: str) -> str:
    return next(c for c in commands() if c.startswith(prefix))


# Commands .ci/check-make-run.sh runs, by the word in its source that shows it.
IN_CHECK_MAKE_RUN = {
    "make run": "make run PORT=",
    "curl ": "QUICKSTART_CURL",
    ".venv/bin/fleetgate status": "fleetgate status",
    "ls fleetgate-logs/": "fleetgate-logs/",
    "make run PORT=8100 ADMIN_PORT=8101": "make run PORT=",
    "make run MODEL=": "make run MODEL=",
}
# Commands run by the tests below.
IN_THIS_FILE = (".venv/bin/hf download ", ".venv/bin/fleetgate serve ~/models/", "fleetgate serve Qwen/")


def test_every_command_is_run_somewhere() -> None:
    assert len(commands()) >= 9
    ci_run = (ROOT / ".ci" / "run").read_text()
    for cmd in commands():
        if cmd == "make test":  # what .ci/run runs before check-make-run.sh
            assert "make test" in ci_run and ".ci/check-make-run.sh" in ci_run
            continue
        covered = [k for k in IN_CHECK_MAKE_RUN if cmd.startswith(k)]
        if covered:
            assert all(IN_CHECK_MAKE_RUN[k] in CHECK_MAKE_RUN for k in covered), cmd
        else:
            assert cmd.startswith(IN_THIS_FILE), f"nothing runs this quick-start command: {cmd}"


def test_hf_download_is_the_hub_clients_command() -> None:
    args = shlex.split(command(".venv/bin/hf download "))
    hf = Path(sys.executable).parent / "hf"
    result = subprocess.run([str(hf), "download", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    flags = [a for a in args if a.startswith("--")]
    assert flags and all(f in result.stdout for f in flags)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    # A model directory on disk, as `hf download --local-dir` leaves one (the demo model's files).
    return demo.ensure(tmp_path / "models" / "Qwen2.5-0.5B-Instruct")


@pytest.fixture
def served(model_dir: Path, tmp_path: Path) -> Iterator[str]:
    args = shlex.split(command(".venv/bin/fleetgate serve ~/models/"))[1:]
    args = [str(model_dir) if a.startswith("~/models/") else a for a in args]
    port, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "fleetgate", *args, "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*cmd, "--admin-port", str(admin)], cwd=tmp_path, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_a_model_directory_served_on_the_cpu(served: str) -> None:
    def listening() -> bool:
        try:
            return httpx.get(served.removesuffix("/v1") + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    until(listening, "the gateway to listen", within=120)
    # Held by the gateway while the worker starts, then answered under the served name.
    client = openai.OpenAI(base_url=served, api_key="any", max_retries=0, timeout=300)
    assert [m.id for m in client.models.list()] == ["qwen"]
    reply = client.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "Hello"}], max_tokens=8
    )
    assert reply.choices[0].message.content is not None and reply.usage is not None


def test_the_gpu_command_on_a_machine_without_one_says_what_to_do(tmp_path: Path) -> None:
    args = shlex.split(command("fleetgate serve Qwen/"))[1:]
    port, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "fleetgate", *args, "--port", str(port), "--admin-port", str(admin)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--engine embedded" in result.stderr


def test_the_fleet_file_validates(tmp_path: Path) -> None:
    (yaml,) = blocks("yaml")
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml)
    result = subprocess.run(
        [sys.executable, "-m", "fleetgate", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "WEB_KEY": "w", "BATCH_KEY": "b"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 pools" in result.stdout
