"""HTTP liveness and readiness probes of a worker (Kubernetes-style ``/livez``, ``/readyz``).

Opt-in (``probe_port``), bound to 127.0.0.1 unless ``probe_host`` says otherwise, served by
a daemon thread. A probe answers from the worker's own state (no broker round trip): 200
with ``{"status": "ok", ...}`` or 503 with the reasons, as JSON.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Check", "ProbeServer"]

log = logging.getLogger("uno_jobs.worker.probes")

#: A probe's check: ``(ok, details)``; ``details`` is shown in the JSON answer.
Check = Callable[[], tuple[bool, dict[str, Any]]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        check = self.server.checks.get(self.path.split("?", 1)[0].rstrip("/") or "/")
        if check is None:
            self._answer(404, {"error": f"no probe at {self.path}", "probes": self.server.paths})
            return
        try:
            ok, details = check()
        except Exception as exc:  # a probe must answer, even about its own failure
            log.exception("probe %s raised", self.path)
            ok, details = False, {"error": f"{type(exc).__name__}: {exc}"}
        self._answer(200 if ok else 503, {"status": "ok" if ok else "failing", **details})

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("probe %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], checks: dict[str, Check]) -> None:
        self.checks = checks
        self.paths = sorted(checks)
        super().__init__(address, _Handler)


class ProbeServer:
    """Serves ``checks`` (path → check) over HTTP until :meth:`stop`."""

    def __init__(self, host: str, port: int, checks: dict[str, Check]) -> None:
        self._server = _Server((host, port), checks)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="uno-probes",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (the port is chosen by the system when 0 was given)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        log.info("health probes on http://%s:%d/livez and /readyz", *self.address)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()
