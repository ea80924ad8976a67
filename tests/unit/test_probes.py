"""The HTTP probe server: answers from its checks, over a real socket on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from uno_jobs.worker._probes import ProbeServer


@pytest.fixture
def state() -> dict[str, Any]:
    return {"ready": True}


@pytest.fixture
def server(state: dict[str, Any]) -> Iterator[ProbeServer]:
    def ready() -> tuple[bool, dict[str, Any]]:
        return state["ready"], {"reasons": [] if state["ready"] else ["consumer disconnected"]}

    def broken() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("no state")

    probes = ProbeServer(
        "127.0.0.1", 0, {"/livez": lambda: (True, {}), "/readyz": ready, "/broken": broken}
    )
    probes.start()
    yield probes
    probes.stop()


def _get(server: ProbeServer, path: str) -> tuple[int, dict[str, Any]]:
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_binds_loopback_on_a_chosen_port(server: ProbeServer) -> None:
    host, port = server.address
    assert host == "127.0.0.1" and port > 0


def test_ready_and_not_ready(server: ProbeServer, state: dict[str, Any]) -> None:
    assert _get(server, "/livez") == (200, {"status": "ok"})
    assert _get(server, "/readyz") == (200, {"status": "ok", "reasons": []})
    state["ready"] = False
    code, body = _get(server, "/readyz/")
    assert code == 503
    assert body == {"status": "failing", "reasons": ["consumer disconnected"]}


def test_unknown_path_and_failing_check(server: ProbeServer) -> None:
    code, body = _get(server, "/metrics")
    assert code == 404 and "/livez" in body["probes"]
    code, body = _get(server, "/broken")
    assert code == 503 and "RuntimeError: no state" in body["error"]


def test_stop_frees_the_port(state: dict[str, Any]) -> None:
    probes = ProbeServer("127.0.0.1", 0, {"/livez": lambda: (True, {})})
    probes.start()
    port = probes.address[1]
    probes.stop()
    again = ProbeServer("127.0.0.1", port, {"/livez": lambda: (True, {})})
    again.stop()
