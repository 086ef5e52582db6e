"""Endpoint churn under load, on the tests' fake cluster (tests/k8s_fake.py; its kubelet runs `fleetgate sim`
pods on 127.0.0.N): issue 14's "1,000 endpoint changes a minute under 300 req/s with 0 failed requests".

A Deployment of --pods simulator pods behind a Service; one `fleetgate gateway` finds them through the
Service's EndpointSlice. While a client process sends --rate requests/s (open loop, streamed and not, in
turn), the cluster changes the slice --changes times a minute:

  - readiness flips: a ready pod's Ready condition turns False (a failing readiness probe: ready and serving
    false in the slice) and back True a moment later;
  - replacements: every --replace-every seconds a ready pod is deleted: terminating in the slice; its
    simulator gets SIGTERM after --prestop seconds (the chart's preStop sleep; 0: at once) and then has 5 s
    to finish what it has (uvicorn's graceful shutdown), then the pod is removed; the ReplicaSet creates a
    new pod, which appears with its address not ready, then turns ready.

Every change of one pod's conditions in the slice (added, ready, not ready, terminating, removed) is one
endpoint change; flips are paced so that all changes together meet the asked rate. Reported: failed requests
(target 0) by kind, requests served by a pod the slice said was not ready or terminating all the time from
the request's send to its response head (the gateway picks somewhere in between; with how long before the
send the slice said so: the watch needs a moment to tell the gateway), the gateway's retries, and its CPU.
The client reads the gateway's `x-fleetgate-endpoint` header (routing.debug_headers).

All clocks are CLOCK_MONOTONIC on one machine (the fake's loop.time(), the client's time.monotonic()).
Run: .venv/bin/python benchmarks/k8s_churn.py [--rate 300] [--changes 1000] [--duration 60] [--pods 6]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import copy
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from tests.k8s_kubelet import Cluster  # noqa: E402

from procs import cpu_seconds, free_port, wait_http  # noqa: E402

MODEL = "sim-model"
Obj = dict[str, Any]


# ---- the client (run as a process of its own: `k8s_churn.py --client URL RATE SECONDS OUT`) ----------------
async def _one(http: Any, url: str, i: int, stream: bool, max_tokens: int) -> dict[str, Any]:
    import aiohttp

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"request {i}: tell me about pods"}],
        "max_tokens": max_tokens,
        "stream": stream,
        "ignore_eos": True,
    }
    rec: dict[str, Any] = {"i": i, "stream": stream, "sent": time.monotonic(), "endpoint": None}
    try:
        headers = {"x-request-id": f"churn-{i}"}  # found in the gateway's request log afterwards
        async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            rec["head"] = time.monotonic()
            rec["status"] = r.status
            rec["endpoint"] = r.headers.get("x-fleetgate-endpoint")
            if r.status != 200:
                rec["error"] = f"http {r.status}: {(await r.text())[:200]}"
            elif not stream:
                data = await r.json()
                if data["usage"]["completion_tokens"] != max_tokens:
                    rec["error"] = f"short answer: {data['usage']}"
            else:
                # Lean on purpose: a client parsing every chunk falls behind its schedule on a shared box.
                done, tokens, err = False, 0, None
                async for line in r.content:
                    if not line.startswith(b"data: "):
                        continue
                    if line.startswith(b"data: [DONE]"):
                        done = True
                        break
                    if b'"error"' in line:
                        err = f"error event: {json.loads(line[6:])['error'].get('message', '')[:200]}"
                    elif b'"content":"' in line and b'"content":""' not in line:
                        tokens += 1
                if err or not done or tokens != max_tokens:
                    rec["error"] = err or f"stream cut: done={done} tokens={tokens}"
    except (aiohttp.ClientError, TimeoutError) as e:
        rec["error"] = f"transport: {type(e).__name__}: {e}"
    rec["end"] = time.monotonic()
    return rec


async def _client(url: str, rate: float, seconds: float, max_tokens: int, out: Path) -> None:
    import aiohttp

    # Idle connections are dropped before the gateway's 5 s keep-alive ends them: aiohttp keeps them 15 s,
    # and a request sent on one the server is closing fails with ServerDisconnectedError (a client that
    # fell behind its schedule hit that race 67 times in 900 requests).
    conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=3)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as http:
        tasks: list[asyncio.Task[dict[str, Any]]] = []
        n = int(rate * seconds)
        t0 = time.monotonic() + 0.2
        lag: list[float] = []
        for i in range(n):
            at = t0 + i / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag.append(time.monotonic() - at)
            tasks.append(asyncio.create_task(_one(http, url, i, i % 2 == 0, max_tokens)))
        recs = await asyncio.gather(*tasks)
    lag.sort()
    summary = {"records": recs, "lag_p50": lag[len(lag) // 2], "lag_p99": lag[-len(lag) // 100]}
    await asyncio.to_thread(out.write_text, json.dumps(summary))


# ---- the cluster side ------------------------------------------------------------------------------------
@dataclass
class Timeline:
    """Each pod's slice state over time, from the EndpointSlice events the fake emits."""

    states: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # pod -> [(time, state)]
    last: dict[str, str] = field(default_factory=dict)
    changes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def seen(self, plural: str, kind: str, obj: Obj) -> None:
        if plural != "endpointslices":
            return
        now = asyncio.get_running_loop().time()
        current: dict[str, str] = {}
        if kind != "DELETED":
            for ep in obj.get("endpoints") or []:
                c = ep["conditions"]
                state = "terminating" if c["terminating"] else "ready" if c["ready"] else "not-ready"
                current[ep["targetRef"]["name"]] = state
        for pod in set(current) | set(self.last):
            state = current.get(pod, "gone")
            if self.last.get(pod, "gone") != state:
                self.changes += 1
                self.kinds[state] += 1
                self.states.setdefault(pod, []).append((now, state))
        self.last = current

    def during(self, pod: str, start: float, end: float) -> list[tuple[str, float]]:
        """The pod's slice states between `start` and `end`, each with since when."""
        hist = self.states.get(pod) or []
        i = bisect.bisect_right(hist, (start, "~")) - 1
        out = [("gone", float("-inf"))] if i < 0 else []
        out += [(state, t) for t, state in hist[max(i, 0) :] if t <= end]
        return out


def _ready(pod: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


async def churn(
    c: Cluster, tl: Timeline, per_minute: float, seconds: float, replace_every: float
) -> Counter[str]:
    """Flip readiness and replace pods until `seconds` are over, the slice changing `per_minute` times."""
    kube = c.kube
    rng = random.Random(7)
    done: Counter[str] = Counter()
    down: dict[str, float] = {}  # pod flipped not ready -> when
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    next_replace = t0 + replace_every

    def flip(name: str, ready: bool) -> None:
        pod = copy.deepcopy(kube.get("pods", "default", name))
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        conds = [x for x in pod["status"]["conditions"] if x["type"] != "Ready"]
        pod["status"]["conditions"] = [*conds, {"type": "Ready", "status": "True" if ready else "False"}]
        kube.put("pods", pod)

    start_changes = tl.changes
    while (now := loop.time()) < t0 + seconds:
        live = [p for p in kube.list("pods", "default") if not p["metadata"].get("deletionTimestamp")]
        for name in [n for n in down if kube.get("pods", "default", n) is None]:
            del down[name]
        if now >= next_replace:
            ready = [p["metadata"]["name"] for p in live if _ready(p) and p["metadata"]["name"] not in down]
            if len(ready) > 2:
                kube.delete_pod("default", rng.choice(ready))
                done["replaced"] += 1
            next_replace += replace_every
        # Pace flips so that every change counted (the controllers' too) keeps to the asked rate.
        due = (now - t0) * per_minute / 60
        if tl.changes - start_changes < due:
            ready = [p["metadata"]["name"] for p in live if _ready(p) and p["metadata"]["name"] not in down]
            if down and (len(ready) <= max(2, len(live) // 2) or rng.random() < 0.5):
                name = min(down, key=down.__getitem__)
                del down[name]
                flip(name, True)
                done["flipped up"] += 1
            elif ready:
                name = rng.choice(ready)
                down[name] = now
                flip(name, False)
                done["flipped down"] += 1
        await asyncio.sleep(max(0.001, 60 / per_minute / 2))
    for name in list(down):
        flip(name, True)
    return done


def fleet(api: str, port: int, admin: int) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin}}}
kubernetes: {{api_url: {api}, retry_max: 0.3}}
pools:
  - name: qwen
    models: [{MODEL}]
    discovery: {{kubernetes: {{service: vllm}}}}
    routing: {{debug_headers: true}}
"""


def gateway_metric(admin: int, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        c = Cluster(tmp, ("--model-name", MODEL, "--time-scale", str(args.time_scale)))
        tl = Timeline()
        gw: subprocess.Popen[bytes] | None = None
        try:
            c.kubelet.prestop = args.prestop
            c.call(lambda: c.kube.listeners.append(tl.seen))
            c.call(
                lambda: c.kube.add_deployment("vllm", {"app": "vllm"}, replicas=args.pods, port=c.pod_port)
            )
            c.call(lambda: c.kube.add_service("vllm", {"app": "vllm"}, c.pod_port))
            deadline = time.monotonic() + 120
            while len(c.pods(ready=True)) < args.pods:
                assert time.monotonic() < deadline, "pods never became ready"
                time.sleep(0.2)
            port, admin = free_port(), free_port()
            path = tmp / "fleet.yaml"
            path.write_text(fleet(c.kube.url, port, admin))
            log = (tmp / "gateway.log").open("wb")
            gw = subprocess.Popen(
                [sys.executable, "-m", "fleetgate", "gateway", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            wait_http(f"http://127.0.0.1:{port}/health", gw)
            time.sleep(2)  # the first list and the first scrapes are not what is measured
            retries0 = gateway_metric(admin, "fleetgate_retries_total")
            errors0 = gateway_metric(admin, "fleetgate_upstream_errors_total")
            out = tmp / "client.json"
            client = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--client",
                    f"http://127.0.0.1:{port}",
                    str(args.rate),
                    str(args.duration),
                    str(args.max_tokens),
                    str(out),
                ]
            )
            # Only the changes made while the load runs count (the pods' start-up added some before).
            changes0, kinds0 = c.call(lambda: (tl.changes, Counter(tl.kinds)))
            cpu0, w0 = cpu_seconds(gw.pid), time.monotonic()
            done = c.run(churn(c, tl, args.changes, args.duration, args.replace_every), args.duration + 30)
            churn_wall = time.monotonic() - w0
            cpu_churn = cpu_seconds(gw.pid) - cpu0
            changes, kinds = c.call(lambda: (tl.changes - changes0, dict(tl.kinds - kinds0)))
            client.wait(args.duration + 120)
            retries = gateway_metric(admin, "fleetgate_retries_total") - retries0
            upstream_errors = gateway_metric(admin, "fleetgate_upstream_errors_total") - errors0
            data = json.loads(out.read_text())
            data["logged"] = sorted(
                {int(m) for m in re.findall(r"request_id=churn-(\d+)", (tmp / "gateway.log").read_text())}
            )
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / "client.json").write_text(out.read_text())
                (args.keep / "slices.json").write_text(json.dumps(tl.states))
                for log_file in [tmp / "gateway.log", *tmp.glob("pod-*.log")]:
                    (args.keep / log_file.name).write_bytes(log_file.read_bytes())
        finally:
            if gw is not None:
                gw.send_signal(signal.SIGINT)
                gw.wait(30)
            c.close()
        report(args, data, tl, changes, kinds, done, churn_wall, cpu_churn, retries, upstream_errors)


def report(
    args: argparse.Namespace,
    data: dict[str, Any],
    tl: Timeline,
    changes: int,
    kinds: dict[str, int],
    done: Counter[str],
    wall: float,
    cpu: float,
    retries: float,
    upstream_errors: float,
) -> None:
    recs: list[dict[str, Any]] = data["records"]
    failed = [r for r in recs if "error" in r]
    sent_span = max(r["sent"] for r in recs) - min(r["sent"] for r in recs)
    # The gateway picks somewhere between the client's send and the response head; a request counts as sent
    # to an unroutable pod only if the slice said so for that whole time (and since when, before the send).
    stale: Counter[str] = Counter()
    late: list[str] = []
    for r in recs:
        if r.get("endpoint") is None:
            continue
        states = tl.during(r["endpoint"], r["sent"], r["head"])
        if states and all(s != "ready" for s, _ in states):
            state, since = states[0]
            age = r["sent"] - since
            bucket = "< 0.1 s" if age < 0.1 else "0.1-1 s" if age < 1 else ">= 1 s"
            stale[f"{state} {bucket}"] += 1
            if age >= 0.1:
                late.append(f"{r['endpoint']} {state} {age * 1000:.0f} ms before the send")
    print(
        f"offered {args.rate:g} req/s for {args.duration:g} s (sent {len(recs)} over {sent_span:.1f} s; "
        f"schedule lag p50 {data['lag_p50'] * 1000:.1f} ms, p99 {data['lag_p99'] * 1000:.1f} ms), "
        f"{args.pods} pods, sim --time-scale {args.time_scale:g}, {args.max_tokens} tokens each, "
        f"half streamed, preStop {args.prestop:g} s"
    )
    print(
        f"endpoint changes: {changes} in {wall:.1f} s = {changes / wall * 60:.0f}/min "
        f"(slice states entered: {kinds}; churn actions: {dict(done)})"
    )
    print(f"failed requests: {len(failed)} of {len(recs)}")
    # A transport error on a request the gateway never logged: it never arrived. The client wrote it on a
    # kept-alive connection the gateway had just closed (a client loop that fell seconds behind reuses one
    # past the gateway's idle timeout), not something the gateway did.
    logged = set(data["logged"])
    unseen = [r for r in failed if r["error"].startswith("transport") and r["i"] not in logged]
    if unseen:
        print(f"  of which {len(unseen)} never reached the gateway (not in its request log)")
    for kind, n in Counter(r["error"].split(":")[0] for r in failed).most_common():
        example = next(r["error"] for r in failed if r["error"].startswith(kind))
        print(f"  {n} x {kind}: {example}")
    print(
        "served by a pod the slice said was not ready/terminating from send to response head: "
        f"{sum(stale.values())} "
        f"({dict(stale) or 'none'}); gateway retries {retries:.0f}, "
        f"failed upstream attempts {upstream_errors:.0f}"
    )
    for line in late[:10]:
        print(f"  {line}")
    print(
        f"gateway CPU: {cpu:.1f} s over {wall:.1f} s = {cpu / wall:.2f} cores, "
        f"{cpu / max(len(recs), 1) * 1000:.2f} ms per request"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, rate, seconds, max_tokens, out = sys.argv[2:7]
        asyncio.run(_client(url, float(rate), float(seconds), int(max_tokens), Path(out)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=300, help="requests/s offered")
    ap.add_argument("--changes", type=float, default=1000, help="endpoint changes a minute")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--pods", type=int, default=6)
    ap.add_argument("--replace-every", type=float, default=5.0, help="seconds between pod replacements")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--time-scale", type=float, default=1.0, help="the simulators' --time-scale")
    ap.add_argument(
        "--prestop", type=float, default=0.0, help="seconds a deleted pod runs before SIGTERM (preStop sleep)"
    )
    ap.add_argument(
        "--keep", type=Path, help="keep the client's records, the slice timeline, the gateway and pod logs"
    )
    run(ap.parse_args())


if __name__ == "__main__":
    main()
