"""Job events for metrics exporters: what happened to which job, as it happens.

A metrics exporter (the ``uno_jobs_metrics_exporters`` hook, e.g. the Prometheus plugin)
is a :class:`JobEvents` subclass; the worker calls its methods on its event loop, the
producer (``Queue``) in the thread that enqueues. Methods must be quick and must not block
(update counters; do I/O elsewhere). An exception in a listener is logged (once per
listener and method) and never changes a job's outcome.

Outcomes reported by ``job_finished`` (one for every ``job_started``): ``succeeded``,
``failed`` (for good), ``retried`` (the attempt failed, another follows), ``worker_lost``
(its process died), ``skipped`` (a middleware raised ``SkipJob``), ``abandoned`` (handed
back to the broker by an immediate shutdown; its late result is dropped). Messages that
went to the dead letters (without running, or skipped) are also reported by
``job_dead_lettered`` with their reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uno_jobs.worker import BaseWorker

__all__ = ["OUTCOMES", "EventHub", "JobEvents"]

log = logging.getLogger("uno_jobs.events")

OUTCOMES = ("succeeded", "failed", "retried", "worker_lost", "skipped", "abandoned")


class JobEvents:
    """Base class of event listeners: every method is a no-op; override what you need."""

    def worker_started(self, worker: BaseWorker) -> None:
        """The worker is consuming (called once, after start-up)."""

    def worker_stopped(self, worker: BaseWorker) -> None:
        """The worker stopped (called once)."""

    def job_enqueued(self, queue: str, task: str, priority: str) -> None:
        """A producer published a job (or scheduled it, when delayed)."""

    def job_started(self, queue: str, task: str, wait_seconds: float | None) -> None:
        """A job's execution starts; ``wait_seconds`` since enqueue (``None``: unknown)."""

    def job_finished(self, queue: str, task: str, outcome: str, duration_seconds: float) -> None:
        """A job's execution ended with ``outcome`` (one of :data:`OUTCOMES`)."""

    def job_dead_lettered(self, queue: str, task: str, reason: str) -> None:
        """A message went to the dead letters without running (its ``reason``)."""


_METHODS = (
    "worker_started",
    "worker_stopped",
    "job_enqueued",
    "job_started",
    "job_finished",
    "job_dead_lettered",
)


class EventHub(JobEvents):
    """Calls every listener in turn; a listener that raises is logged and skipped.

    Only the methods a listener overrides are called (the per-job path of a worker with
    no exporter calls one method per event).
    """

    def __init__(self, listeners: Sequence[JobEvents] = ()) -> None:
        self.listeners: list[JobEvents] = []
        self._reported: set[tuple[int, str]] = set()
        self._calls: dict[str, list[Any]] = {name: [] for name in _METHODS}
        for listener in listeners:
            self.add(listener)

    def __bool__(self) -> bool:
        return bool(self.listeners)

    def add(self, listener: JobEvents) -> None:
        self.listeners.append(listener)
        for name in _METHODS:
            if getattr(type(listener), name, None) is not getattr(JobEvents, name):
                self._calls[name].append(getattr(listener, name))

    def _call(self, method: str, *args: Any) -> None:
        for bound in self._calls[method]:
            try:
                bound(*args)
            except Exception:
                listener = bound.__self__
                key = (id(listener), method)
                if key not in self._reported:
                    self._reported.add(key)
                    log.exception(
                        "events listener %s.%s raised (reported once; the job is not affected)",
                        type(listener).__name__,
                        method,
                    )

    def worker_started(self, worker: BaseWorker) -> None:
        self._call("worker_started", worker)

    def worker_stopped(self, worker: BaseWorker) -> None:
        self._call("worker_stopped", worker)

    def job_enqueued(self, queue: str, task: str, priority: str) -> None:
        self._call("job_enqueued", queue, task, priority)

    def job_started(self, queue: str, task: str, wait_seconds: float | None) -> None:
        self._call("job_started", queue, task, wait_seconds)

    def job_finished(self, queue: str, task: str, outcome: str, duration_seconds: float) -> None:
        self._call("job_finished", queue, task, outcome, duration_seconds)

    def job_dead_lettered(self, queue: str, task: str, reason: str) -> None:
        self._call("job_dead_lettered", queue, task, reason)
