"""Driving headless Debian Chromium over the DevTools protocol, for tests of pages we generate."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect


class DevTools:
    """A minimal Chrome DevTools Protocol client: one browser websocket, flattened target sessions."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, timeout: float = 10.0, **params: Any) -> Any:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method:
                    return event
            event = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if "method" in event:
                self.events.append(event)


@contextlib.contextmanager
def chromium(tmp: Path) -> Iterator[DevTools]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail(
            "chromium is not installed: the report's browser test needs it. "
            "Install it with `apt-get install -y chromium` (Debian/Ubuntu)."
        )
    profile = tmp / "chromium-profile"
    port_file = profile / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)  # a stale one from an earlier browser would name a dead port
    log = tmp / "chromium.log"
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        while True:
            try:
                ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 2**20, open_timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with ws:
            client = DevTools(ws)
            yield client
            with contextlib.suppress(Exception):
                client.call("Browser.close", timeout=2)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


NUMBER = re.compile(r"^(-?[\d,]+(?:\.\d+)?)(?: (ms|%|req/s|tok/s))?$")
SCALE = {"ms": 1e-3, "%": 1e-2, "req/s": 1.0, "tok/s": 1.0, None: 1.0}

INSPECT = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  return {
    plots: [...document.querySelectorAll('svg.plot')].map(s => ({
      name: s.dataset.plot, size: box(s), title: s.querySelector(':scope > title')?.textContent,
      series: s.querySelectorAll('g.series').length,
      legend: [...s.querySelectorAll('.legend text')].map(t => t.textContent)})),
    cells: [...document.querySelectorAll('td[data-key]')].map(c => ({
      key: c.dataset.key, value: c.dataset.value ?? null, text: c.innerText,
      run: c.closest('tr')?.dataset.run ?? null, size: box(c)})),
    banners: [...document.querySelectorAll('[data-banner]')].map(b => [b.dataset.banner, b.innerText]),
    notes: [...document.querySelectorAll('[data-note]')].map(n => [n.dataset.note, n.innerText]),
    rows: [...document.querySelectorAll('td[data-row]')].map(c => [c.dataset.row, c.innerText]),
    headings: [...document.querySelectorAll('h2')].map(h => h.innerText),
    scripts: document.scripts.length,
    width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
  };
})()"""


@dataclass
class Visit:
    url: str
    seen: dict[str, Any]  # what INSPECT found on the rendered page
    events: list[dict[str, Any]]  # DevTools events from navigation on
    screenshot: Path


def open_page(tmp: Path, page: Path) -> Visit:
    """Load a local page in headless Chromium, inspect it and take a full-page screenshot."""
    url = page.resolve().as_uri()
    with chromium(tmp) as cdp:
        target = next(t for t in cdp.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = cdp.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            cdp.call(f"{domain}.enable", session)
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=1400,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        cdp.events.clear()
        cdp.call("Page.navigate", session, url=url)
        cdp.wait_for("Page.loadEventFired")
        result = cdp.call("Runtime.evaluate", session, expression=INSPECT, returnByValue=True)
        metrics = cdp.call("Page.getLayoutMetrics", session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": metrics["width"], "height": metrics["height"], "scale": 1}
        shot = cdp.call(
            "Page.captureScreenshot", session, format="png", captureBeyondViewport=True, clip=clip
        )
        screenshot = tmp / "page.png"
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return Visit(url, result["result"]["value"], list(cdp.events), screenshot)


def assert_loaded_cleanly(visit: Visit) -> None:
    """Only the page itself was requested, nothing failed, no console error, warning or exception."""
    events = visit.events
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    assert requests == [visit.url], requests
    assert not [e for e in events if e["method"] == "Network.loadingFailed"]
    assert not [e for e in events if e["method"] == "Runtime.exceptionThrown"]
    console = [e["params"] for e in events if e["method"] == "Runtime.consoleAPICalled"]
    assert not [c for c in console if c["type"] in ("error", "assert", "warning")], console
    logs = [e["params"]["entry"] for e in events if e["method"] == "Log.entryAdded"]
    assert not [entry for entry in logs if entry["level"] in ("error", "warning")], logs


def resolve(results: Mapping[str, Any], key: str) -> Any:
    """`summary.ttft.p50` -> results["summary"]["ttft"]["p50"] (list indices as numbers)."""
    node: Any = results
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def assert_numbers_match(visit: Visit, runs: Sequence[Mapping[str, Any]]) -> int:
    """Every number cell equals results.json: data-value exactly, the text to its displayed precision."""
    compared = 0
    for cell in visit.seen["cells"]:
        if cell["key"].startswith("config.") or cell["value"] is None:
            continue
        expected = resolve(runs[int(cell["run"])], cell["key"])
        assert float(cell["value"]) == expected, cell
        match = NUMBER.match(cell["text"].strip())
        assert match, cell
        shown = float(match[1].replace(",", "")) * SCALE[match[2]]
        decimals = len(match[1].partition(".")[2])
        assert abs(shown - expected) <= 0.51 * 10**-decimals * SCALE[match[2]] + 1e-12, cell
        assert cell["size"][0] > 0 and cell["size"][1] > 0, cell
        compared += 1
    return compared
