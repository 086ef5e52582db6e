"""The local provider: workers as child processes of this machine, on free loopback ports.

Each worker has one supervisor task that owns its process: it spawns it, reads its log into a file and the
startup timeline, probes readiness, and on an exit nobody asked for restarts it after an exponential backoff,
until too many failures in a row mark the pool failed. Stops, sleeps and wakes come from outside (the
autoscaler) and change the worker's state first, so the gateway stops routing before anything else happens.

Children run in their own session: a Ctrl-C in the terminal reaches only fleetgate, which then stops them
in order; their whole process group is signalled, so engine subprocesses (vLLM's EngineCore) go too. Should
fleetgate itself be killed, a reaper process (`fleetgate.scaling.reaper`) sees its pipe close and ends them:
no worker outlives its supervisor.

A start that fails for a reason a restart would repeat (the engine's log says so: no GPU, a missing package,
a model not found, a rejected flag, not enough memory; or its program is not installed) fails the pool at
once with that reason, rather than after `max_failures` restarts.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import itertools
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx

from fleetgate.engines.base import Engine, LaunchArgs, Phase
from fleetgate.engines.registry import ENGINES
from fleetgate.scaling.gpus import GpuInventory
from fleetgate.scaling.spec import PoolSpec, WorkerSpec
from fleetgate.scaling.worker import StartupTimeline, Worker, WorkerState

__all__ = ["LocalProvider", "PoolFailed"]

log = logging.getLogger("fleetgate.scaling")

# How often a starting worker is asked whether it is ready, and a draining one how many streams it has left.
POLL_INTERVAL = 0.1
# A worker on loopback answers a probe in milliseconds, or it is stuck.
PROBE_TIMEOUT = 2.0
# Level-1 sleep copies the weights to host memory (8.9 s for 15 GiB on an H200) and waking copies them back.
SLEEP_TIMEOUT = 300.0
# After the process leader exits, how long its pipe may stay open (a straggler killed a moment later).
READER_DRAIN = 2.0
# Log lines quoted in a failure reason.
REASON_LINES = 5
# A download's progress is logged each time it passes another this many percent.
DOWNLOAD_LOG_STEP = 0.1
_LINE_SPLIT = re.compile(r"[\r\n]")


class PoolFailed(RuntimeError):
    """The pool's workers failed too often in a row; it starts nothing until reset."""


@dataclass(eq=False)
class _Run:
    """The supervisor's side of a worker: its task, its process, and the request to stop."""

    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The child leads its own session, so its pid is its process group's id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _read_token(w: WorkerSpec, environ: Mapping[str, str]) -> str | None:
    if w.hf_token_file:
        return Path(w.hf_token_file).read_text().strip() or None
    if w.hf_token_env:
        return environ.get(w.hf_token_env) or None
    return None


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _steps(progress: float | None) -> int:
    return int((progress or 0.0) / DOWNLOAD_LOG_STEP)


def _with_tail(reason: str, tail: list[str]) -> str:
    lines = [line for line in tail if line.strip()][-REASON_LINES:]
    return reason + ("; last log lines:\n" + "\n".join(lines) if lines else "")


class LocalProvider:
    """start/stop/list (and sleep/wake) for workers that are child processes of this one.

    `on_change` is called with the worker after every state change and phase change: the place to keep
    the gateway's endpoints and metrics in step. Use as an async context manager, or call `close()`.
    """

    def __init__(
        self,
        log_dir: Path,
        gpus: GpuInventory,
        *,
        engines: Mapping[str, Engine] = ENGINES,
        on_change: Callable[[Worker], None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.gpus = gpus
        self._engines = engines
        self._on_change = on_change
        self._environ = dict(os.environ if environ is None else environ)
        self._workers: dict[str, Worker] = {}
        self._runs: dict[str, _Run] = {}
        self._failed: dict[str, str] = {}
        self._ids: dict[str, itertools.count[int]] = {}
        self._http = httpx.AsyncClient(timeout=PROBE_TIMEOUT)
        self._reaper: asyncio.subprocess.Process | None = None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The backstop for an interpreter that exits without close(): no worker may outlive us.
        atexit.register(self._kill_all)

    async def __aenter__(self) -> LocalProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- start / stop / list -----------------------------------------------------------------------------
    async def start(self, spec: PoolSpec) -> Worker:
        """A new worker, spawned in the background: it is STARTING when this returns."""
        if spec.name in self._failed:
            raise PoolFailed(f"pool {spec.name} failed: {self._failed[spec.name]}")
        engine = self._engines.get(spec.worker.engine)
        if engine is None:
            raise ValueError(f"unknown engine {spec.worker.engine!r} (known: {', '.join(self._engines)})")
        if spec.worker.sleep and not engine.sleeps:
            raise ValueError(f"engine {engine.name} has no sleep mode")
        wid = f"{spec.name}-{next(self._ids.setdefault(spec.name, itertools.count(1)))}"
        gpus = self.gpus.allocate(wid, spec.worker.gpus_per_worker)
        w = Worker(id=wid, spec=spec, log_path=self.log_dir / f"{wid}.log", gpus=gpus)
        run = _Run()
        self._workers[wid] = w
        self._runs[wid] = run
        run.task = asyncio.create_task(self._supervise(w, engine, run), name=f"worker:{wid}")
        self._changed(w)
        return w

    async def stop(self, worker_id: str, in_flight: Callable[[], int] | None = None) -> None:
        """Drain (while `in_flight()` > 0, up to the pool's drain deadline), then SIGTERM, then SIGKILL
        after the pool's grace."""
        w = self._workers.get(worker_id)
        run = self._runs.get(worker_id)
        if w is None or run is None:
            return
        if w.state is not WorkerState.FAILED and not run.stop_requested.is_set():
            was_routable = w.state in (WorkerState.READY, WorkerState.DRAINING)
            self._set(w, WorkerState.DRAINING)
            if was_routable and in_flight is not None:
                await self._drain(w, in_flight)
            run.stop_requested.set()
        if run.task is not None:
            await asyncio.shield(run.task)
        if self._workers.pop(worker_id, None) is not None:
            self._runs.pop(worker_id, None)
            self.gpus.release(worker_id)
            if w.state is not WorkerState.FAILED:
                self._set(w, WorkerState.STOPPED)

    def list(self, pool: str | None = None) -> list[Worker]:
        return [w for w in self._workers.values() if pool is None or w.pool == pool]

    # ---- sleep / wake ------------------------------------------------------------------------------------
    async def sleep(self, worker_id: str, in_flight: Callable[[], int] | None = None) -> None:
        """Drain, then POST /sleep at the pool's level. A failed sleep leaves the worker ready."""
        w = self._worker_in(worker_id, WorkerState.READY)
        if not w.spec.worker.sleep:
            raise ValueError(f"pool {w.pool} does not sleep (sleep: false)")
        run = self._runs[w.id]
        self._set(w, WorkerState.DRAINING)
        if in_flight is not None:
            await self._drain(w, in_flight)
        try:
            r = await self._http.post(
                f"{w.url}/sleep", params={"level": w.spec.worker.sleep_level}, timeout=SLEEP_TIMEOUT
            )
            r.raise_for_status()
        except httpx.HTTPError as e:
            w.last_error = f"sleep failed: {e!r}"
            log.warning("%s: %s", w.id, w.last_error)
            if w.state is WorkerState.DRAINING and not run.stop_requested.is_set():
                self._set(w, WorkerState.READY)
            return
        # A crash or a stop may have overtaken the call.
        if w.state is WorkerState.DRAINING and not run.stop_requested.is_set():
            self._set(w, WorkerState.SLEEPING)

    async def wake(self, worker_id: str) -> float | None:
        """POST /wake_up; the seconds it took, or None when it failed (the worker is then restarted)."""
        w = self._worker_in(worker_id, WorkerState.SLEEPING)
        self._set(w, WorkerState.STARTING)
        run = self._runs[w.id]
        proc = run.proc
        t0 = time.monotonic()
        try:
            r = await self._http.post(f"{w.url}/wake_up", timeout=SLEEP_TIMEOUT)
            r.raise_for_status()
        except httpx.HTTPError as e:
            w.last_error = f"wake failed: {e!r}"
            log.warning("%s: %s; restarting it", w.id, w.last_error)
            # A worker that cannot wake is of no use asleep: the supervisor sees it die and starts it afresh.
            if proc is not None and run.proc is proc:
                _signal_group(proc.pid, signal.SIGKILL)
            return None
        seconds = time.monotonic() - t0
        w.wakes += 1
        w.last_wake_seconds = seconds
        if w.state is WorkerState.STARTING:
            self._set(w, WorkerState.READY)
        return seconds

    # ---- pool failure ------------------------------------------------------------------------------------
    def failure(self, pool: str) -> str | None:
        """Why the pool failed, or None."""
        return self._failed.get(pool)

    async def reset(self, pool: str) -> None:
        """Forget a pool's failure (the operator fixed its spec) and its failed workers."""
        self._failed.pop(pool, None)
        for w in self.list(pool):
            if w.state is WorkerState.FAILED:
                await self.stop(w.id)

    async def close(self) -> None:
        """Stop every worker (no drain: the gateway drains its streams before it closes the provider)."""
        await asyncio.gather(*(self.stop(wid) for wid in list(self._workers)))
        await self._http.aclose()
        if self._reaper is not None and self._reaper.stdin is not None:
            self._reaper.stdin.close()  # nothing left to reap: it exits
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reaper.wait(), READER_DRAIN)
        atexit.unregister(self._kill_all)

    # ---- internals ---------------------------------------------------------------------------------------
    def _worker_in(self, worker_id: str, state: WorkerState) -> Worker:
        w = self._workers.get(worker_id)
        if w is None or w.state is not state:
            raise ValueError(
                f"worker {worker_id} is {'gone' if w is None else w.state.value}, not {state.value}"
            )
        return w

    def _changed(self, w: Worker) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(w)
        except Exception:
            log.exception("on_change callback failed for %s", w.id)

    def _set(self, w: Worker, state: WorkerState) -> None:
        if w.state is not state:
            w.state = state
            self._changed(w)

    async def _drain(self, w: Worker, in_flight: Callable[[], int]) -> None:
        deadline = time.monotonic() + w.spec.drain_deadline
        # The count is the gateway's to keep; nothing here is told when it changes, so it is polled.
        while in_flight() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(POLL_INTERVAL)

    async def _supervise(self, w: Worker, engine: Engine, run: _Run) -> None:
        try:
            await self._keep_running(w, engine, run)
        except Exception:
            # A fault here must not leave a worker 'starting' forever with nobody watching it.
            log.exception("supervisor of %s failed", w.id)
            self._fail(w, f"the supervisor of {w.id} failed (see fleetgate's log)")

    async def _keep_running(self, w: Worker, engine: Engine, run: _Run) -> None:
        spec = w.spec
        while not run.stop_requested.is_set():
            await self._run_once(w, engine, run)
            if run.stop_requested.is_set():
                return
            if w.diagnosis is not None:
                self._fail(w, w.diagnosis)
                return
            t = w.timeline
            if t is not None and t.ready_at is not None and time.monotonic() - t.ready_at >= spec.backoff_cap:
                w.failures = 0
            w.failures += 1
            if w.failures >= spec.max_failures:
                self._fail(w, f"worker {w.id} failed {w.failures} times in a row; {w.last_error}")
                return
            delay = spec.backoff(w.failures)
            log.warning("%s %s; restarting in %.1f s", w.id, w.last_error, delay)
            w.restart_at = time.monotonic() + delay
            self._set(w, WorkerState.STARTING)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.stop_requested.wait(), delay)
            w.restart_at = None
            if not run.stop_requested.is_set():
                w.restarts += 1

    def _fail(self, w: Worker, reason: str) -> None:
        self._failed[w.pool] = reason
        log.error("pool %s failed: %s", w.pool, reason)
        self._set(w, WorkerState.FAILED)
        self.gpus.release(w.id)

    async def _run_once(self, w: Worker, engine: Engine, run: _Run) -> None:
        """One process from spawn to exit."""
        ws = w.spec.worker
        w.port = _free_port()
        try:
            token = await asyncio.to_thread(_read_token, ws, self._environ)
        except OSError as e:
            w.last_error = f"cannot read the hub token file: {e}"
            return
        launch = engine.command(
            LaunchArgs(
                model=ws.model,
                served_model_name=ws.served_model_name,
                port=w.port,
                engine_args=ws.engine_args,
                gpus=w.gpus,
                sleep=ws.sleep,
                hf_token=token,
                offline=ws.offline,
                env=ws.env,
            )
        )
        w.timeline = StartupTimeline(time.monotonic())
        w.tail.clear()
        w.diagnosis = None
        try:
            logfile = await asyncio.to_thread(w.log_path.open, "ab")
        except OSError as e:
            w.last_error = f"cannot open the log file: {e}"
            return
        try:
            logfile.write(f"---- fleetgate: starting {w.id}: {launch.describe()}\n".encode())
            if run.stop_requested.is_set():  # stopped while the token was read
                return
            log.info("starting %s (its output: %s): %s", w.id, w.log_path, launch.describe())
            try:
                proc = await asyncio.create_subprocess_exec(
                    *launch.argv,
                    env=launch.environ(self._environ),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                w.last_error = f"cannot start {launch.argv[0]}: {e.strerror or e}"
                if isinstance(e, FileNotFoundError):
                    # Not installed: no restart will find it.
                    w.diagnosis = f"`{launch.argv[0]}` is not installed here (not on PATH)" + (
                        f": {engine.missing}" if engine.missing else ""
                    )
                logfile.write(f"---- fleetgate: {w.last_error}\n".encode())
                return
            run.proc = proc
            w.pid = proc.pid
            await self._reap_on_death(proc.pid)
            self._changed(w)
            assert proc.stdout is not None
            reader = asyncio.create_task(self._read_log(w, engine, proc.stdout, logfile))
            try:
                timed_out = await self._watch(w, run, proc)
            finally:
                # Whatever the leader left behind in its group goes with it.
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader, READER_DRAIN)
                run.proc = None
                self._tell_reaper(f"-{proc.pid}")
            how = timed_out or _exit_reason(proc.returncode)
            logfile.write(f"---- fleetgate: {w.id} {how}\n".encode())
            if not run.stop_requested.is_set():
                w.last_error = _with_tail(how, list(w.tail))
                if w.diagnosis is not None:
                    log.error("%s cannot start: %s (its log: %s)", w.id, w.diagnosis, w.log_path)
        finally:
            logfile.close()

    async def _watch(self, w: Worker, run: _Run, proc: asyncio.subprocess.Process) -> str | None:
        """Wait for readiness, then for the process to exit or a stop to be asked for; ends with the process.

        Returns why it was ended when it never became ready in time, else None.
        """
        exited = asyncio.create_task(proc.wait())
        stop = asyncio.create_task(run.stop_requested.wait())
        ready = asyncio.create_task(self._until_ready(w))
        try:
            done, _ = await asyncio.wait(
                {exited, stop, ready}, timeout=w.spec.startup_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                await self._terminate(w, proc, exited)
                return f"not ready after {w.spec.startup_timeout:g} s"
            if ready in done:
                assert w.timeline is not None
                w.timeline.finish(time.monotonic())
                log.info(
                    "%s ready in %.1f s (%s)",
                    w.id,
                    w.timeline.total or 0.0,
                    ", ".join(f"{p}: {d:.1f} s" for p, d in w.timeline.durations().items()),
                )
                if w.state is WorkerState.STARTING:
                    self._set(w, WorkerState.READY)
                else:
                    self._changed(w)
                await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                await self._terminate(w, proc, exited)
            return None
        finally:
            for t in (stop, ready):
                t.cancel()
            await asyncio.gather(exited, stop, ready, return_exceptions=True)

    async def _terminate(
        self, w: Worker, proc: asyncio.subprocess.Process, exited: asyncio.Task[int]
    ) -> None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), w.spec.stop_grace)
        except TimeoutError:
            log.warning("%s ignored SIGTERM for %.1f s; killing it", w.id, w.spec.stop_grace)
            _signal_group(proc.pid, signal.SIGKILL)
            await exited

    async def _until_ready(self, w: Worker) -> None:
        """Until /health answers 200 and /v1/models lists the served name: a worker that is up under
        another name would take requests only to answer 404."""
        name = w.spec.worker.served_model_name
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                health = await self._http.get(f"{w.url}/health")
                if health.status_code == 200:
                    models = await self._http.get(f"{w.url}/v1/models")
                    if models.status_code == 200 and any(
                        m.get("id") == name for m in models.json().get("data", [])
                    ):
                        return
            await asyncio.sleep(POLL_INTERVAL)

    async def _read_log(self, w: Worker, engine: Engine, stream: asyncio.StreamReader, out: BinaryIO) -> None:
        """Copy the worker's output to its log file as it comes; read startup phases off each line.

        Progress bars redraw with '\\r', so both line ends split lines. The file gets the bytes unchanged.
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while chunk := await stream.read(65536):
            # Local file writes land in the page cache; they do not hold up the loop.
            out.write(chunk)
            out.flush()
            *lines, pending = _LINE_SPLIT.split(pending + decoder.decode(chunk))
            self._lines(w, engine, lines)
        self._lines(w, engine, [pending + decoder.decode(b"", final=True)])

    def _lines(self, w: Worker, engine: Engine, lines: Sequence[str]) -> None:
        t = w.timeline
        now = time.monotonic()
        for line in lines:
            if not line.strip():
                continue
            w.tail.append(line)
            if t is None or t.ready_at is not None:
                continue
            if w.diagnosis is None:
                # Only before ready: a worker that served and then crashed is restarted as usual.
                w.diagnosis = engine.diagnose(line)
            events = engine.parse_line(line)
            if events:
                before, progress = t.phase, t.progress
                t.feed(events, now)
                if t.phase is not before:
                    self._changed(w)
                elif t.phase is Phase.DOWNLOAD and _steps(t.progress) > _steps(progress):
                    log.info("%s: download %.0f%% (%.0f s since start)", w.id, 100 * (t.progress or 0.0),
                                 now - t.segments[0].start)  # fmt: skip

    async def _reap_on_death(self, pgid: int) -> None:
        """Register a worker's process group with the reaper (started on first use)."""
        if self._reaper is None or self._reaper.returncode is not None:
            try:
                self._reaper = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "fleetgate.scaling.reaper",
                    stdin=asyncio.subprocess.PIPE, start_new_session=True,
                )  # fmt: skip
            except OSError as e:
                log.warning(
                    "cannot start the worker reaper (%s): workers would outlive a killed fleetgate", e
                )
                return
        self._tell_reaper(f"+{pgid}")

    def _tell_reaper(self, line: str) -> None:
        reaper = self._reaper
        if reaper is not None and reaper.stdin is not None and not reaper.stdin.is_closing():
            reaper.stdin.write(f"{line}\n".encode())

    def _kill_all(self) -> None:
        for run in self._runs.values():
            if run.proc is not None and run.proc.returncode is None:
                _signal_group(run.proc.pid, signal.SIGKILL)
