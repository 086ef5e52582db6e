"""GET /ping on a port of its own, as RunPod's load-balancing endpoints probe their workers (PORT_HEALTH).

RunPod reads 200 as ready, 204 as initializing (no traffic yet, the worker is not killed) and anything else
as unhealthy. The answer is the gateway's own state (probe.gateway_state): 204 while fleetgate starts and
vLLM loads, 200 once a worker is up, 503 once the gateway stops answering or drains after SIGTERM, so RunPod
stops sending before fleetgate stops serving.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fleetgate.container.probe import State, gateway_state

__all__ = ["PingServer"]

_STATUS = {State.READY: 200, State.STARTING: 204, State.DOWN: 503}


class PingServer:
    """A daemon thread serving GET /ping (and /health, same answer) on `port`."""

    def __init__(self, port: int, public: int, admin: int, host: str = "0.0.0.0") -> None:
        self.answered = threading.Event()  # the gateway has answered once: silence from now on is DOWN
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/ping", "/health"):
                    self._answer(404, b'{"error": "not found"}')
                    return
                state = gateway_state(public, admin)
                if state is not State.DOWN:
                    owner.answered.set()
                elif not owner.answered.is_set():
                    state = State.STARTING  # fleetgate itself is still starting (imports, binding)
                body = b"" if state is State.STARTING else f'{{"status": "{state.value}"}}'.encode()
                self._answer(_STATUS[state], body)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                if status != 204:
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                self.end_headers()
                if status != 204:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds: not worth a log line each

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="ping", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
