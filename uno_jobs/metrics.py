"""The numbers behind ``Worker.get_health()`` and ``Worker.get_metrics()``.

Definitions (all since the worker started):

- ``jobs_processed_total``: jobs whose execution finished (succeeded + failed). Messages
  dead-lettered without running (unknown task, undecodable, …) are not counted.
- ``error_rate`` = ``failure_rate`` = ``jobs_failed / jobs_processed_total`` (0 when none).
- ``processing_time_*_ms``: task run time, measured around the task call; p95/p99 over the
  last ``RESERVOIR_SIZE`` jobs (memory does not grow with the job count).
- ``queue_wait_time_avg_ms``: from the enqueue time uno_jobs writes into the message to
  the start of execution; jobs without one (Celery producers) are left out, not zero.
- ``throughput_jobs_per_minute``: jobs finished in the last 60 seconds.

``WorkerStats.invalid_envelopes`` (not in ``get_metrics()``, whose keys are the spec's):
items the broker held that were no message at all, such as a stray item in a Redis list
or a garbage row of the embedded broker, logged and dropped by the consumer thread.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

__all__ = ["RESERVOIR_SIZE", "WorkerStats"]

RESERVOIR_SIZE = 2048
_WINDOW_SECONDS = 60.0


class WorkerStats:
    """Counters and bounded samples, updated on the worker's event loop."""

    def __init__(self) -> None:
        self.started_monotonic = time.monotonic()
        self.succeeded = 0
        self.failed = 0
        self.consecutive_failures = 0
        self.last_completed: float | None = None
        self._durations: deque[float] = deque(maxlen=RESERVOIR_SIZE)
        self._duration_sum = 0.0
        self._wait_sum = 0.0
        self._wait_count = 0
        self._finished_at: deque[float] = deque()
        self._invalid_envelopes: Callable[[], int] = _none

    def restart(self) -> None:
        """Start counting again (at worker start); keeps the ``invalid_envelopes`` source."""
        source = self._invalid_envelopes
        self.__init__()  # type: ignore[misc]
        self._invalid_envelopes = source

    def count_invalid_envelopes(self, source: Callable[[], int]) -> None:
        """Read :attr:`invalid_envelopes` from ``source`` (the consumer thread's counter)."""
        self._invalid_envelopes = source

    @property
    def invalid_envelopes(self) -> int:
        """Items that were no message at all, dropped since the worker started."""
        return self._invalid_envelopes()

    def job_started(self, enqueued_at: float | None, now: float) -> None:
        if enqueued_at is not None:
            self._wait_sum += max(0.0, now - enqueued_at)
            self._wait_count += 1

    def job_finished(self, ok: bool, duration: float) -> None:
        now = time.time()
        if ok:
            self.succeeded += 1
            self.consecutive_failures = 0
        else:
            self.failed += 1
            self.consecutive_failures += 1
        self._durations.append(duration)
        self._duration_sum += duration
        self.last_completed = now
        finished = self._finished_at
        finished.append(time.monotonic())
        horizon = finished[-1] - _WINDOW_SECONDS
        while finished and finished[0] < horizon:
            finished.popleft()

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed

    @property
    def failure_rate(self) -> float:
        return self.failed / self.processed if self.processed else 0.0

    def uptime(self) -> int:
        return int(time.monotonic() - self.started_monotonic)

    def last_completed_iso(self) -> str | None:
        if self.last_completed is None:
            return None
        stamp = datetime.fromtimestamp(self.last_completed, tz=timezone.utc)
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")

    def throughput_per_minute(self) -> int:
        horizon = time.monotonic() - _WINDOW_SECONDS
        return sum(1 for t in self._finished_at if t >= horizon)

    def snapshot(self, active_jobs: int) -> dict[str, Any]:
        samples = sorted(self._durations)
        return {
            "jobs_processed_total": self.processed,
            "jobs_succeeded": self.succeeded,
            "jobs_failed": self.failed,
            "processing_time_avg_ms": _ms(self._duration_sum / self.processed)
            if self.processed
            else 0.0,
            "processing_time_p95_ms": _ms(_percentile(samples, 0.95)),
            "processing_time_p99_ms": _ms(_percentile(samples, 0.99)),
            "queue_wait_time_avg_ms": _ms(self._wait_sum / self._wait_count)
            if self._wait_count
            else 0.0,
            "throughput_jobs_per_minute": self.throughput_per_minute(),
            "error_rate": round(self.failure_rate, 4),
            "active_jobs": active_jobs,
        }


def _none() -> int:
    return 0


def _percentile(sorted_samples: list[float], q: float) -> float:
    if not sorted_samples:
        return 0.0
    index = max(0, math.ceil(q * len(sorted_samples)) - 1)
    return sorted_samples[index]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
