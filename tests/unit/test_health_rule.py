"""The health rule of uno_jobs.worker._observe, on a stand-in worker (no broker)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from uno_jobs.worker._base import WorkerState
from uno_jobs.worker._observe import Observer


def stand_in(**changes: Any) -> Any:
    worker = SimpleNamespace(
        state=WorkerState.RUNNING,
        _consumer=SimpleNamespace(connected=True),
        _buffer=[],
        _inbox=[],
        _running={},
        concurrency=2,
        options=SimpleNamespace(healthcheck_interval=60.0, max_failures=None),
        stats=SimpleNamespace(consecutive_failures=0),
        worker_id="w-1",
        _loop=None,
    )
    for name, value in changes.items():
        setattr(worker, name, value)
    return worker


def observer(worker: Any, idle_for: float = 0.0) -> Observer:
    obs = Observer(worker)
    then = time.monotonic() - idle_for
    obs._progress.started = obs._progress.finished = then
    return obs


def test_healthy_when_running_and_connected() -> None:
    assert observer(stand_in()).health() == ("healthy", [])


def test_not_running_or_disconnected_is_unhealthy() -> None:
    assert observer(stand_in(state=WorkerState.STOPPED)).health()[0] == "unhealthy"
    assert observer(stand_in(state=WorkerState.INITIALIZED)).health()[0] == "unhealthy"
    status, reasons = observer(stand_in(_consumer=SimpleNamespace(connected=False))).health()
    assert (status, reasons) == ("unhealthy", ["consumer disconnected from the broker"])
    assert observer(stand_in(_consumer=None)).health()[0] == "unhealthy"


def test_jobs_waiting_with_a_free_slot_and_no_progress_is_unhealthy() -> None:
    waiting = stand_in(_buffer=[object()], _running={1: object()})
    assert observer(waiting, idle_for=5).health()[0] == "healthy"  # within the interval
    status, reasons = observer(waiting, idle_for=61).health()
    assert status == "unhealthy"
    assert "1 job(s) wait with a free slot" in reasons[0]
    ready, details = observer(waiting, idle_for=61).readiness()
    assert not ready and details["health"] == "unhealthy"


def test_every_slot_busy_without_finishing_is_degraded_not_unhealthy() -> None:
    busy = stand_in(_buffer=[object()], _running={1: object(), 2: object()})
    status, reasons = observer(busy, idle_for=61).health()
    assert status == "degraded"
    assert reasons[0].startswith("all 2 slot(s) busy and no job finished for")
    assert observer(busy, idle_for=61).readiness()[0] is True


def test_failures_near_max_failures_and_pause_degrade() -> None:
    failing = stand_in(
        options=SimpleNamespace(healthcheck_interval=60.0, max_failures=10),
        stats=SimpleNamespace(consecutive_failures=5),
    )
    assert observer(failing).health() == (
        "degraded",
        ["5 consecutive failures (max_failures=10)"],
    )
    paused = observer(stand_in(state=WorkerState.PAUSED))
    assert paused.health() == ("degraded", ["worker is paused"])
    ready, details = paused.readiness()
    assert not ready and "not taking jobs: worker is paused" in details["reasons"]


def test_liveness_follows_the_loop_tick() -> None:
    obs = observer(stand_in())
    assert obs.liveness()[0] is True
    obs._loop_tick = time.monotonic() - 11
    alive, details = obs.liveness()
    assert not alive and "has not answered for" in details["reasons"][0]
