"""The local provider against real processes: simulated vLLM workers, and small scripts where a test needs
a process that misbehaves (ignores SIGTERM, leaves a grandchild behind)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from fleetgate.engines.base import Engine, Launch, LaunchArgs, Phase
from fleetgate.engines.registry import ENGINES
from fleetgate.scaling.gpus import GpuInventory
from fleetgate.scaling.local import LocalProvider, PoolFailed
from fleetgate.scaling.spec import PoolSpec
from fleetgate.scaling.worker import Worker, WorkerState
from tests.conftest import alive
from tests.test_scaling_policy import pool_spec, worker_spec

# 10 virtual seconds of vLLM startup log at 20x: half a second of phases after the interpreter starts.
FAST = ("--startup-time", "10", "--time-scale", "20")


def sim_pool(*extra: str, **changes: object) -> PoolSpec:
    """A pool of fast simulator workers (`extra` flags added) with short restart and stop timings."""
    timings = {"backoff_base": 0.2, "backoff_cap": 1.0, "startup_timeout": 20.0, "stop_grace": 3.0}
    return pool_spec(**{"worker": worker_spec(engine_args=(*FAST, *extra)), **timings, **changes})


async def until(cond: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def state(w: Worker) -> WorkerState:
    """The state now (a plain attribute read would stay narrowed across awaits for the type checker)."""
    return w.state


async def get_json(url: str) -> object:
    async with httpx.AsyncClient() as client:
        return (await client.get(url)).json()


def child_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    async with LocalProvider(tmp_path / "logs", GpuInventory(["0", "1"])) as p:
        yield p


async def ready(w: Worker) -> None:
    await until(lambda: w.state is WorkerState.READY, f"{w.id} ready (last error: {w.last_error})")


async def test_start_ready_with_phases_gpus_token_and_log(tmp_path: Path) -> None:
    token = tmp_path / "hf-token"
    token.write_text("hf_very_secret\n")
    spec = sim_pool(
        worker=dataclasses.replace(
            worker_spec(engine_args=FAST), gpus_per_worker=1, hf_token_file=str(token), offline=True
        )
    )
    seen: list[tuple[WorkerState, Phase | None]] = []

    def record(w: Worker) -> None:
        seen.append((w.state, None if w.timeline is None else w.timeline.phase))

    async with LocalProvider(tmp_path / "logs", GpuInventory(["3", "5"]), on_change=record) as provider:
        w = await provider.start(spec)
        assert w.state is WorkerState.STARTING
        await ready(w)
        assert w.pid is not None
        env = child_env(w.pid)
        assert (env["CUDA_VISIBLE_DEVICES"], env["HF_TOKEN"], env["HF_HUB_OFFLINE"]) == (
            "3",
            "hf_very_secret",
            "1",
        )
        assert "VLLM_SERVER_DEV_MODE" not in env
        models = await get_json(f"{w.url}/v1/models")
        assert isinstance(models, dict) and [m["id"] for m in models["data"]] == ["llama"]
        assert provider.list("p") == [w]

        t = w.timeline
        assert t is not None and t.total is not None
        assert [s.phase for s in t.segments] == [Phase.INIT, Phase.LOAD, Phase.COMPILE, Phase.READY]
        durations = t.durations()
        assert durations[Phase.COMPILE] > 0.1  # the sim spreads its 0.5 s over load, compile and the rest
        assert sum(durations.values()) <= t.total + 1e-9
        # Each phase was announced as the log reached it, then the readiness probe made it routable.
        assert [p for _, p in seen if p is not None][-5:] == [
            Phase.INIT,
            Phase.LOAD,
            Phase.COMPILE,
            Phase.READY,
            Phase.READY,
        ]
        assert seen[-1][0] is WorkerState.READY
        snap = w.snapshot(time.monotonic())
        assert snap["state"] == "ready" and snap["gpus"] == ["3"]

    log = w.log_path.read_text()
    assert "Starting vLLM server on http://127.0.0.1:" in log
    assert "HF_TOKEN=***" in log
    assert "hf_very_secret" not in log
    assert state(w) is WorkerState.STOPPED and not alive(w.pid)


async def test_crash_is_restarted_after_backoff(tmp_path: Path) -> None:
    changes: list[tuple[float, WorkerState]] = []
    async with LocalProvider(
        tmp_path, GpuInventory([]), on_change=lambda w: changes.append((time.monotonic(), w.state))
    ) as provider:
        w = await provider.start(sim_pool(backoff_base=0.5))
        await ready(w)
        first_pid = w.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        await until(lambda: state(w) is WorkerState.STARTING, "crash noticed")
        noticed = changes[-1][0]
        await ready(w)
        assert w.pid != first_pid and not alive(first_pid)
        assert (w.restarts, w.failures) == (1, 1)
        assert w.last_error is not None and w.last_error.startswith("killed by SIGKILL")
        assert "Application startup complete" in w.last_error  # the log lines it died after
        assert w.timeline is not None
        assert w.timeline.segments[0].start - noticed >= 0.5 - 0.01  # the backoff, then a fresh spawn


def crashing(args: LaunchArgs) -> Launch:
    return Launch(argv=[sys.executable, "-c", "print('something went wrong'); raise SystemExit(3)"], env={})


async def test_repeated_failure_marks_the_pool_failed_with_the_reason(tmp_path: Path) -> None:
    # A crash the engine's log does not explain may be transient: restarted, until max_failures in a row.
    engines = {**ENGINES, "crashing": Engine("crashing", crashing, rules=(), sleeps=False)}
    async with LocalProvider(tmp_path, GpuInventory(["0", "1"]), engines=engines) as provider:
        spec = sim_pool(
            worker=worker_spec(engine="crashing"), backoff_base=0.05, backoff_cap=0.1, max_failures=3
        )
        w = await provider.start(spec)
        await until(lambda: w.state is WorkerState.FAILED, "pool failure")
        reason = provider.failure("p")
        assert reason is not None
        assert "failed 3 times in a row" in reason
        assert "exited with code 3" in reason
        assert "something went wrong" in reason
        assert w.restarts == 2
        assert provider.gpus.free() == ["0", "1"]
        with pytest.raises(PoolFailed):
            await provider.start(spec)
        await provider.reset("p")
        assert provider.failure("p") is None and provider.list("p") == []


async def test_a_failure_its_log_explains_is_not_retried(provider: LocalProvider) -> None:
    # The simulator refuses a context longer than its KV cache, as vLLM would: a restart cannot help.
    w = await provider.start(sim_pool("--max-model-len", "99999999", backoff_base=0.05, max_failures=5))
    await until(lambda: w.state is WorkerState.FAILED, "pool failure")
    reason = provider.failure("p")
    assert reason is not None and reason.startswith("the simulator cannot start: ")
    assert "larger than the available KV cache" in reason
    assert w.restarts == 0
    assert w.log_path.read_text().count("---- fleetgate: starting") == 1


async def test_a_program_that_is_not_installed_fails_at_once(tmp_path: Path) -> None:
    def missing(args: LaunchArgs) -> Launch:
        return Launch(argv=["fleetgate-no-such-program", "serve"], env={})

    engines = {**ENGINES, "missing": Engine("missing", missing, rules=(), sleeps=False, missing="install it")}
    async with LocalProvider(tmp_path, GpuInventory([]), engines=engines) as provider:
        w = await provider.start(sim_pool(worker=worker_spec(engine="missing"), max_failures=5))
        await until(lambda: w.state is WorkerState.FAILED, "pool failure")
        assert (
            provider.failure("p")
            == "`fleetgate-no-such-program` is not installed here (not on PATH): install it"
        )
        assert w.restarts == 0


async def test_stop_drains_then_terminates(provider: LocalProvider) -> None:
    w = await provider.start(sim_pool())
    await ready(w)
    pid = w.pid
    assert pid is not None
    streams = [2]
    polls = [0]

    def in_flight() -> int:
        polls[0] += 1
        return streams[0]

    stopping = asyncio.create_task(provider.stop(w.id, in_flight))
    await until(lambda: polls[0] >= 3, "the drain polling the in-flight count")
    assert w.state is WorkerState.DRAINING
    assert alive(pid) and not stopping.done()
    streams[0] = 0
    await stopping
    assert state(w) is WorkerState.STOPPED
    assert not alive(pid)
    assert provider.list() == []
    # uvicorn shuts down cleanly on SIGTERM, then re-raises it: no SIGKILL was needed.
    assert w.log_path.read_text().rstrip().endswith("killed by SIGTERM")


async def test_drain_deadline_bounds_the_wait(provider: LocalProvider) -> None:
    w = await provider.start(sim_pool(drain_deadline=0.3))
    await ready(w)
    t0 = time.monotonic()
    # A stream that never ends: without the deadline the stop would never return (30 s only guards a hang).
    await asyncio.wait_for(provider.stop(w.id, lambda: 1), 30)
    assert time.monotonic() - t0 >= 0.3
    assert w.state is WorkerState.STOPPED


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(f"helper {helper.pid}", flush=True)
time.sleep(120)
"""


def stubborn(args: LaunchArgs) -> Launch:
    return Launch(argv=[sys.executable, "-c", STUBBORN], env={})


async def test_sigkill_after_the_grace_takes_the_whole_group(tmp_path: Path) -> None:
    engines = {**ENGINES, "stubborn": Engine("stubborn", stubborn, rules=(), sleeps=False)}
    async with LocalProvider(tmp_path, GpuInventory([]), engines=engines) as provider:
        w = await provider.start(sim_pool(worker=worker_spec(engine="stubborn"), stop_grace=0.3))
        await until(lambda: any(line.startswith("helper ") for line in w.tail), "the helper process")
        helper = int(next(line for line in w.tail if line.startswith("helper ")).split()[1])
        pid = w.pid
        assert pid is not None and alive(helper)
        await provider.stop(w.id)
    assert not alive(pid)
    await until(lambda: not alive(helper), "the helper to be gone", within=5)
    assert "killed by SIGKILL" in w.log_path.read_text()


async def test_sleep_and_wake(provider: LocalProvider) -> None:
    w = await provider.start(sim_pool(worker=worker_spec(engine_args=FAST, sleep=True)))
    await ready(w)
    assert w.pid is not None and child_env(w.pid)["VLLM_SERVER_DEV_MODE"] == "1"
    await provider.sleep(w.id)
    assert w.state is WorkerState.SLEEPING
    assert await get_json(f"{w.url}/is_sleeping") == {"is_sleeping": True}
    seconds = await provider.wake(w.id)
    assert seconds is not None and seconds > 0
    assert state(w) is WorkerState.READY
    assert (w.wakes, w.last_wake_seconds) == (1, seconds)
    assert await get_json(f"{w.url}/is_sleeping") == {"is_sleeping": False}
    with pytest.raises(ValueError, match="not sleeping"):
        await provider.wake(w.id)


async def test_sleep_needs_a_sleeping_pool(provider: LocalProvider) -> None:
    w = await provider.start(sim_pool())
    await ready(w)
    with pytest.raises(ValueError, match="does not sleep"):
        await provider.sleep(w.id)
    bad = sim_pool(worker=worker_spec(engine="embedded", sleep=True))
    with pytest.raises(ValueError, match="no sleep mode"):
        await provider.start(bad)


async def test_close_leaves_no_child(tmp_path: Path) -> None:
    provider = LocalProvider(tmp_path, GpuInventory([]))
    a = await provider.start(sim_pool())
    slow = await provider.start(sim_pool(worker=worker_spec(engine_args=("--startup-time", "600"))))
    await ready(a)
    await until(lambda: slow.pid is not None, "the slow worker spawned")
    pids = [a.pid, slow.pid]
    await provider.close()
    assert not any(alive(p) for p in pids if p is not None)
    assert (a.state, slow.state) == (WorkerState.STOPPED, WorkerState.STOPPED)


PARENT = """
import asyncio, faulthandler, signal, sys
from pathlib import Path
from fleetgate.scaling.gpus import GpuInventory
from fleetgate.scaling.local import LocalProvider
from tests.test_scaling_local import sim_pool

async def main() -> None:
    async with LocalProvider(Path(sys.argv[1]), GpuInventory([])) as provider:
        w = await provider.start(sim_pool())
        while w.state.value != "ready":
            await asyncio.sleep(0.02)
        print(w.pid, w.port, flush=True)
        await asyncio.Event().wait()

faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for the stacks if this hangs
asyncio.run(main())
"""


async def test_ctrl_c_of_the_parent_stops_every_worker(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT))
    root = Path(__file__).parent.parent
    stderr = tmp_path / "parent.err"
    with stderr.open("wb") as err:
        parent = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(tmp_path / "logs"),
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    try:
        assert parent.stdout is not None
        worker = int((await asyncio.wait_for(parent.stdout.readline(), 30)).split()[0])
        assert alive(worker)
        parent.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(parent.wait(), 30)
        except TimeoutError:
            # Seen once in CI (1 run in about 8, not reproduced since): leave the stacks to read.
            parent.send_signal(signal.SIGUSR1)
            await until(lambda: b"most recent call first" in stderr.read_bytes(), "a stack dump", within=5)
            pytest.fail(f"the parent still runs 30 s after SIGINT; its stderr:\n{stderr.read_text()}")
        assert code != 0  # KeyboardInterrupt, after the cleanup
        await until(lambda: not alive(worker), "the worker to be gone", within=5)
        # The graceful sequence ran (SIGTERM), not only the atexit backstop (SIGKILL).
        assert (tmp_path / "logs" / "p-1.log").read_text().rstrip().endswith("killed by SIGTERM")
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    # What a container runtime does after a short grace period: SIGKILL, no cleanup code runs.
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT))
    root = Path(__file__).parent.parent
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(tmp_path / "logs"),
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        pid, port = map(int, (await asyncio.wait_for(parent.stdout.readline(), 30)).split())
        assert alive(pid) and port_open(port)
        parent.kill()
        await parent.wait()
        await until(lambda: not alive(pid), "the worker to be gone", within=10)
        await until(lambda: not port_open(port), "the worker's port to close", within=10)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
