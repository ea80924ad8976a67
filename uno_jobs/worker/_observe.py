"""What a worker tells the outside: job events to metrics exporters, health, HTTP probes.

Health rule (``get_health()["status"]``, and the probes), checked in this order:

- ``unhealthy``: the worker is not running (not started, stopped); or its consumer is
  disconnected from the broker; or jobs wait in the worker while a slot is free and no job
  started or finished for ``healthcheck_interval`` seconds (the job loop is stuck).
- ``degraded``: paused or shutting down; or the consecutive task failures reached half of
  ``max_failures``; or every slot has been busy for ``healthcheck_interval`` seconds with no
  job finishing while jobs wait (long jobs, or hung ones: the worker cannot tell which).
- ``healthy`` otherwise.

``/readyz`` is 200 when the status is ``healthy`` or ``degraded`` and the worker is running
(not paused, not shutting down); ``/livez`` is 200 while the worker's event loop answers
(it ticks every second; no tick for 10 s fails it). Neither asks the broker anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from uno_jobs.events import EventHub, JobEvents
from uno_jobs.plugins import get_plugins

if TYPE_CHECKING:
    from uno_jobs.worker._base import BaseWorker
    from uno_jobs.worker._probes import ProbeServer

__all__ = ["Observer"]

log = logging.getLogger("uno_jobs.worker")

_LOOP_TICK_SECONDS = 1.0
_LOOP_STALE_SECONDS = 10.0


class _Progress(JobEvents):
    """Remembers when the last job started or finished (monotonic seconds)."""

    def __init__(self) -> None:
        self.started = self.finished = time.monotonic()

    def reset(self) -> None:
        """Count from now (the worker starts)."""
        self.started = self.finished = time.monotonic()

    def job_started(self, queue: str, task: str, wait_seconds: float | None) -> None:
        self.started = time.monotonic()

    def job_finished(self, queue: str, task: str, outcome: str, duration_seconds: float) -> None:
        self.finished = time.monotonic()


class Observer:
    """One worker's events hub, exporters, health rule and probe server."""

    def __init__(self, worker: BaseWorker) -> None:
        self._worker = worker
        self._progress = _Progress()
        self.events = EventHub([self._progress])
        self._exporters: list[Any] = []
        self._probes: ProbeServer | None = None
        self._loop_tick = time.monotonic()
        self._ticker: asyncio.TimerHandle | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the metrics exporters, before the worker connects or starts processes.

        An exporter's factory may set up its process (prometheus-client's multiprocess
        directory must exist before process-pool children start); it is started later.
        """
        worker = self._worker
        for item in worker.options.metrics_exporters:
            if isinstance(item, str):
                exporter = get_plugins().lookup("metrics exporters", item)(worker)
            else:
                exporter = item
            self._exporters.append(exporter)
            if isinstance(exporter, JobEvents):
                self.events.add(exporter)

    def start(self) -> None:
        """Start exporters and probes (on the worker's loop, once it is consuming)."""
        worker = self._worker
        self._progress.reset()
        for exporter in self._exporters:
            start = getattr(exporter, "start", None)
            if callable(start):
                start()
        self._tick()
        port = worker.options.probe_port
        if port is not None:
            # Imported here: http.server and what it pulls in cost ~1 MB of memory.
            from uno_jobs.worker._probes import ProbeServer

            self._probes = ProbeServer(
                worker.options.probe_host,
                port,
                {"/livez": self.liveness, "/readyz": self.readiness},
            )
            self._probes.start()
        self.events.worker_started(worker)

    def stop(self) -> None:
        """Stop probes and exporters (any thread; once the worker has stopped)."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self._probes is not None:
            self._probes.stop()
            self._probes = None
        self.events.worker_stopped(self._worker)
        for exporter in reversed(self._exporters):
            stop = getattr(exporter, "stop", None)
            if callable(stop):
                try:
                    stop()
                except Exception:
                    log.exception("metrics exporter %s failed to stop", type(exporter).__name__)
        self._exporters.clear()

    def _tick(self) -> None:
        self._loop_tick = time.monotonic()
        loop = self._worker._loop
        if loop is not None and not loop.is_closed():
            self._ticker = loop.call_later(_LOOP_TICK_SECONDS, self._tick)

    @property
    def probe_address(self) -> tuple[str, int] | None:
        """``(host, port)`` the probes listen on, or ``None`` when they are off."""
        return None if self._probes is None else self._probes.address

    # -- health ---------------------------------------------------------------------------

    def health(self) -> tuple[str, list[str]]:
        """``(status, reasons)`` by the rule in this module's docstring."""
        from uno_jobs.worker._base import WorkerState

        worker = self._worker
        state = worker.state
        if state in (WorkerState.INITIALIZED, WorkerState.STOPPED):
            return "unhealthy", [f"worker is {state}"]
        consumer = worker._consumer
        if consumer is None or not consumer.connected:
            return "unhealthy", ["consumer disconnected from the broker"]
        now = time.monotonic()
        interval = worker.options.healthcheck_interval
        waiting = len(worker._buffer) + len(worker._inbox)
        running = len(worker._running)
        last = max(self._progress.started, self._progress.finished)
        reasons: list[str] = []
        stuck = waiting and running < worker.concurrency and state == WorkerState.RUNNING
        if stuck and now - last > interval:
            return "unhealthy", [
                f"{waiting} job(s) wait with a free slot and no job started or finished "
                f"for {now - last:.0f} s (healthcheck_interval={interval:g})"
            ]
        if state in (WorkerState.PAUSED, WorkerState.SHUTTING_DOWN):
            reasons.append(f"worker is {state}")
        limit = worker.options.max_failures
        failures = worker.stats.consecutive_failures
        if limit and failures >= max(1, limit // 2):
            reasons.append(f"{failures} consecutive failures (max_failures={limit})")
        if waiting and running >= worker.concurrency and now - self._progress.finished > interval:
            reasons.append(
                f"all {running} slot(s) busy and no job finished for "
                f"{now - self._progress.finished:.0f} s while {waiting} job(s) wait"
            )
        return ("degraded" if reasons else "healthy"), reasons

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        from uno_jobs.worker._base import WorkerState

        status, reasons = self.health()
        state = self._worker.state
        ready = status != "unhealthy" and state == WorkerState.RUNNING
        if status != "unhealthy" and state != WorkerState.RUNNING:
            reasons = [*reasons, f"not taking jobs: worker is {state}"]
        return ready, {"health": status, "reasons": reasons, "worker_id": self._worker.worker_id}

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self._loop_tick
        alive = age < _LOOP_STALE_SECONDS
        details: dict[str, Any] = {"worker_id": self._worker.worker_id}
        if not alive:
            details["reasons"] = [f"the worker's event loop has not answered for {age:.0f} s"]
        return alive, details
