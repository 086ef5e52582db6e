"""The images' entrypoint run on the host as the container would run it: `python -m fleetgate.container` with
the simulator as the engine, real sockets, the openai SDK as the client, signals sent to the entrypoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import alive, free_port, until

# A simulated vLLM (l4-gemma-3-1b) that starts at once and streams about 100 tokens a second.
SIM = {"MODEL": "l4-gemma-3-1b", "FLEETGATE_ENGINE": "sim", "SERVED_MODEL_NAME": "gemma"}
SIM_FLAGS = ["--", "--startup-time", "0", "--time-scale", "1"]
_GATES = ("VLLM_SERVER_DEV_MODE", "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_API_KEY", "FLEETGATE_CONFIG")


@dataclass
class Container:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    health_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ping(self) -> int:
        return _status(f"http://127.0.0.1:{self.health_port}/ping")

    def children(self) -> list[int]:
        """Processes whose parent is the entrypoint (fleetgate) or fleetgate (its workers)."""
        out: list[int] = []
        parents = {self.proc.pid}
        for _ in range(2):
            found = [pid for pid in _pids() if _ppid(pid) in parents]
            out += found
            parents = set(found)
        return out


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Start]:
    started: list[Container] = []

    def start(*args: str, env: Mapping[str, str], ready: bool = True) -> Container:
        port, admin, health = free_port(), free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if k not in _GATES}
        full = {
            **base,
            "PORT": str(port),
            "FLEETGATE_ADMIN_PORT": str(admin),
            "PORT_HEALTH": str(health),
            "FLEETGATE_HOST": "127.0.0.1",
            "FLEETGATE_RUNTIME_DIR": str(tmp_path),
            **env,
        }
        log = tmp_path / f"container-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleetgate.container", *args],
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        c = Container(proc, port, admin, health, log)
        started.append(c)
        if ready:
            until(lambda: c.ping() == 200 or proc.poll() is not None, "a worker behind the gateway", 30)
            assert proc.poll() is None, log.read_text()[-3000:]
        return c

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGINT)
            try:
                c.proc.wait(20)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()


Start = Callable[..., Container]


def test_env_in_command_out_request_served(container: Start) -> None:
    c = container(*SIM_FLAGS, env={**SIM, "MAX_MODEL_LEN": "128"})
    client = openai.OpenAI(base_url=f"{c.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert reply.model == "gemma" and reply.usage is not None and reply.usage.completion_tokens == 5
    # MAX_MODEL_LEN reached the worker: the simulated vLLM refuses a prompt longer than 128 tokens.
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="gemma", messages=[{"role": "user", "content": "word " * 300}], max_tokens=5
        )
    assert "maximum context length is 128 tokens" in exc.value.message
    log = c.log.read_text()
    assert (
        f"fleetgate-container: fleetgate serve l4-gemma-3-1b --port {c.port} --host 127.0.0.1 "
        f"--admin-port {c.admin_port} --engine sim --served-model-name gemma -- --startup-time 0 "
        "--time-scale 1 --max-model-len 128"
    ) in log
    # Docker's HEALTHCHECK agrees, with the container's PORT.
    env = {**os.environ, "PORT": str(c.port), "FLEETGATE_ADMIN_PORT": str(c.admin_port)}
    check = subprocess.run(
        [sys.executable, "-m", "fleetgate.container.healthcheck", "--worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert (check.returncode, check.stdout.strip()) == (0, "ready")


def test_ping_says_initializing_until_the_worker_is_ready(container: Start) -> None:
    """RunPod's contract on PORT_HEALTH: 204 while the model loads, 200 once it serves."""
    c = container("--", "--startup-time", "40", "--time-scale", "20", env=SIM, ready=False)
    until(lambda: c.ping() != 0, "the ping port", 20)
    seen = [c.ping()]
    until(lambda: _status(f"{c.url}/health") == 200, "the gateway", 20)
    until(lambda: seen.append(c.ping()) or seen[-1] == 200, "ping 200", 30)  # type: ignore[func-returns-value]
    assert 204 in seen, seen
    assert set(seen) <= {204, 200}, seen


def test_sigterm_drains_a_stream_then_everything_exits(container: Start, tmp_path: Path) -> None:
    """SIGTERM to the entrypoint (PID 1's place): /ping fails at once, the stream in flight finishes whole,
    fleetgate stops its worker and the entrypoint exits 0 leaving no process behind."""
    env = {**SIM, "FLEETGATE_PRE_STOP_DELAY": "0.3", "FLEETGATE_DRAIN_TIMEOUT": "20"}
    c = container(*SIM_FLAGS, env=env)
    family = c.children()
    assert len(family) >= 2, family  # fleetgate and its simulated vLLM
    client = openai.OpenAI(base_url=f"{c.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "tell me"}],
        max_tokens=150,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta.role == "assistant"
    c.proc.send_signal(signal.SIGTERM)
    until(lambda: c.ping() == 503, "ping to fail while draining", 10)
    rest = list(chunks)
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == 150
    assert [ch.choices[0].finish_reason for ch in rest if ch.choices and ch.choices[0].finish_reason] == [
        "length"
    ]
    assert c.proc.wait(30) == 0
    assert not [pid for pid in family if alive(pid)], c.log.read_text()[-2000:]
    assert "SIGTERM: not ready" in c.log.read_text()


def test_api_key_from_vllm_api_key(container: Start) -> None:
    """VLLM_API_KEY guards the gateway, as it guards vLLM; the worker itself never sees it."""
    c = container(*SIM_FLAGS, env={**SIM, "VLLM_API_KEY": "tenant-key"})
    denied = openai.OpenAI(base_url=f"{c.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        denied.models.list()
    client = openai.OpenAI(base_url=f"{c.url}/v1", api_key="tenant-key", max_retries=0)
    reply = client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "x"}], max_tokens=3
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert "FLEETGATE_API_KEY=*** fleetgate gateway --config" in c.log.read_text()
    assert "tenant-key" not in c.log.read_text()
    for pid in c.children():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(e.startswith(b"VLLM_API_KEY=") for e in environ), pid


def test_a_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "MODEL": "m", "GPU_MEMORY_UTILIZATION": "92"}
    done = subprocess.run(
        [sys.executable, "-m", "fleetgate.container"], env=env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 2
    assert done.stderr == (
        "fleetgate-container: error: GPU_MEMORY_UTILIZATION='92': must be a fraction in (0, 1]\n"
    )


# ---- the tiny init on its own ----------------------------------------------------------------------------

_INIT = (
    "import sys; from fleetgate.container.init import supervise; "
    "sys.exit(supervise(sys.argv[1:], {'PATH': '/usr/bin:/bin'}))"
)


def _init(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _INIT, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_init_forwards_signals_and_reports_them_like_a_shell(sig: int, code: int) -> None:
    p = _init("sh", "-c", "echo started; exec sleep 30")
    assert p.stdout is not None and p.stdout.readline() == "started\n"
    p.send_signal(sig)
    assert p.wait(10) == code


def test_init_reaps_orphans_and_returns_the_commands_status() -> None:
    # The subshell starts a short sleep and exits: the sleep is orphaned to the init, which must reap it.
    p = _init("sh", "-c", "(sleep 0.2 & echo $!); read line; exit 7")
    assert p.stdout is not None and p.stdin is not None
    orphan = int(p.stdout.readline())
    until(lambda: _ppid(orphan) == p.pid or not Path(f"/proc/{orphan}").exists(), "the orphan's adoption", 10)
    until(lambda: not Path(f"/proc/{orphan}").exists(), "the orphan reaped (no zombie left)", 10)
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.wait(10) == 7


def test_init_exit_status_when_the_command_is_missing() -> None:
    p = _init("/nonexistent/fleetgate")
    assert p.wait(10) == 127


def test_ping_before_and_after_the_gateway_answered() -> None:
    """No gateway yet: initializing (204), not unhealthy, or RunPod would kill a worker that is booting. No
    gateway after it had answered: 503."""
    from fleetgate.container.ping import PingServer

    ping = PingServer(0, free_port(), free_port(), host="127.0.0.1")
    ping.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{ping.port}/ping").status_code == 204
        ping.answered.set()
        assert httpx.get(f"http://127.0.0.1:{ping.port}/ping").status_code == 503
        assert httpx.get(f"http://127.0.0.1:{ping.port}/nope").status_code == 404
    finally:
        ping.stop()


def test_embedded_engine_through_the_entrypoint(
    container: Start, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The CPU image's path: a model directory, the embedded engine, MAX_MODEL_LEN enforced by it."""
    from fleetgate.engines.embedded import demo

    # The demo model where tests/test_embedded_engine.py makes it: made once per session (~25 s on 2 cores).
    model = demo.ensure(tmp_path_factory.getbasetemp() / "embedded-demo-model")
    env = {
        "MODEL": str(model),
        "FLEETGATE_ENGINE": "embedded",
        "SERVED_MODEL_NAME": "demo",
        "MAX_MODEL_LEN": "64",
    }
    c = container(env=env)
    client = openai.OpenAI(base_url=f"{c.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "word " * 200}], max_tokens=4
        )
    assert f"fleetgate serve {model} --port {c.port}" in c.log.read_text()
