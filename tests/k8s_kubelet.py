"""The fake cluster's kubelet, and the cluster run in a thread of its own for synchronous tests.

The kubelet gives each scheduled pod an address of its own on loopback (127.0.0.N: Linux routes all of
127/8 to lo, so every pod can listen on the same container port, as pods do), runs `fleetgate sim` there,
reports the container running and turns the pod Ready once /health answers. A deleted pod's simulator gets
SIGTERM (after `prestop` seconds: the chart's preStop sleep) and the pod is removed once it exited; `kill`
is a node dying under a pod (SIGKILL, pod gone).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import itertools
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from tests.k8s_fake import FakeKube, Obj

T = TypeVar("T")


def _ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod["status"].get("conditions") or []
    )


class Kubelet:
    def __init__(
        self, kube: FakeKube, port: int, log_dir: Path, sim_flags: tuple[str, ...] = (), ns: str = "default"
    ) -> None:
        self.kube = kube
        self.port = port
        self.log_dir = log_dir
        self.sim_flags = sim_flags
        self.ns = ns
        self.crash = False  # containers crash at start: CrashLoopBackOff
        self.prestop = 0.0  # seconds a deleted pod keeps running before SIGTERM (a preStop sleep hook)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.ips: dict[str, str] = {}
        self._hosts = itertools.count(2)
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting: set[str] = set()
        self._terminating: set[str] = set()
        kube.listeners.append(self._seen)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _seen(self, plural: str, kind: str, pod: Obj) -> None:
        if plural != "pods" or kind == "DELETED":
            return
        name = pod["metadata"]["name"]
        scheduled = any(
            c.get("type") == "PodScheduled" and c.get("status") == "True"
            for c in pod["status"].get("conditions") or []
        )
        if pod["metadata"].get("deletionTimestamp"):
            if name not in self._terminating:
                self._terminating.add(name)
                self._spawn(self._terminate(name))
        elif scheduled and name not in self._starting:
            self._starting.add(name)
            self._spawn(self._run(name))

    def _update(self, name: str, change: Callable[[Obj], None]) -> None:
        pod = self.kube.get("pods", self.ns, name)
        if pod is None:
            return
        pod = copy.deepcopy(pod)
        change(pod)
        self.kube.put("pods", pod)

    async def _run(self, name: str) -> None:
        ip = self.ips[name] = f"127.0.0.{next(self._hosts)}"
        if self.crash:

            def crashed(p: Obj) -> None:
                p["status"].update(
                    phase="Running",
                    podIP=ip,
                    containerStatuses=[
                        {
                            "name": "vllm",
                            "ready": False,
                            "restartCount": 3,
                            "state": {
                                "waiting": {
                                    "reason": "CrashLoopBackOff",
                                    "message": "back-off 40s restarting failed container=vllm",
                                }
                            },
                            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                        }
                    ],
                )

            self._update(name, crashed)
            return
        log = (self.log_dir / f"pod-{name}.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "fleetgate",
            "sim",
            "--host",
            ip,
            "--port",
            str(self.port),
            "--startup-time",
            "0",
            *self.sim_flags,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
        # The container's env from the pod spec, as a kubelet sets it (e.g. vLLM's dev-mode gate for sleep).
        pod = self.kube.get("pods", self.ns, name) or {}
        for container in (pod.get("spec") or {}).get("containers") or []:
            env.update({e["name"]: str(e.get("value", "")) for e in container.get("env") or []})
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env
        )
        log.close()
        self.procs[name] = proc
        if name in self._terminating:  # deleted while it was being started
            self._spawn(self._terminate(name))
            return

        def running(p: Obj) -> None:
            p["status"].update(
                phase="Running",
                podIP=ip,
                containerStatuses=[
                    {"name": "vllm", "ready": False, "restartCount": 0, "state": {"running": {}}}
                ],
            )

        self._update(name, running)
        async with aiohttp.ClientSession() as http:
            while proc.returncode is None:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"http://{ip}:{self.port}/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.05)

        def ready(p: Obj) -> None:
            conds = [c for c in p["status"]["conditions"] if c.get("type") != "Ready"]
            p["status"]["conditions"] = [*conds, {"type": "Ready", "status": "True"}]
            p["status"]["containerStatuses"][0]["ready"] = True

        if proc.returncode is None and self.kube.get("pods", self.ns, name) is not None:
            self._update(name, ready)

    async def _terminate(self, name: str) -> None:
        if self.prestop > 0:
            await asyncio.sleep(self.prestop)
        proc = self.procs.pop(name, None)
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.kube.remove("pods", self.ns, name)

    async def kill(self, name: str) -> None:
        """The node under the pod dies: its process is gone at once and so is the pod."""
        proc = self.procs.pop(name, None)
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        self._starting.add(name)
        self._terminating.add(name)
        self.kube.remove("pods", self.ns, name)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        self.procs.clear()


class Cluster:
    """A FakeKube and its kubelet on an event loop in a thread, for tests that drive real processes."""

    def __init__(self, log_dir: Path, sim_flags: tuple[str, ...] = (), gpus: int | None = None) -> None:
        from tests.conftest import free_port

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fake-cluster")
        self.thread.start()
        self.kube = FakeKube(gpus=gpus)
        self.pod_port = free_port()
        self.kubelet = Kubelet(self.kube, self.pod_port, log_dir, sim_flags)
        self.run(self.kube.start())

    def run(self, aw: Awaitable[T], timeout: float = 30) -> T:
        async def wrap() -> T:
            return await aw

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the cluster's loop (the store is the loop's alone)."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def go() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        self.loop.call_soon_threadsafe(go)
        return fut.result(30)

    def pods(self, ready: bool | None = None, live: bool = True) -> list[Obj]:
        def get() -> list[Obj]:
            pods = copy.deepcopy(self.kube.list("pods", "default"))
            if live:
                pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            return [p for p in pods if ready is None or _ready(p) == ready]

        return self.call(get)

    def replicas(self, deployment: str) -> int:
        return self.call(lambda: int(self.kube.get("deployments", "default", deployment)["spec"]["replicas"]))  # type: ignore[index]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.kubelet.close())
        with contextlib.suppress(Exception):
            self.run(self.kube.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
