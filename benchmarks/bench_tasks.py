"""The uno_jobs no-op tasks the benchmark workers run.

Each no-op records only the wall-clock time of the first call in its process (one
``is None`` test per job), so the runner can also report first-job-to-last-job time, the
figure the Celery and Dramatiq runs are measured by. The latency tasks hand their
``sent_ns`` argument to ``benchmarks._latency`` on their first line.
"""

from __future__ import annotations

import time

from benchmarks import _latency
from uno_jobs import task

__all__ = [
    "ASYNC_LATENCY_TASK",
    "ASYNC_TASK",
    "LATENCY_TASK",
    "SYNC_TASK",
    "first_call",
    "latency",
    "latency_async",
    "noop",
    "noop_async",
]

SYNC_TASK = "bench.noop"
ASYNC_TASK = "bench.noop_async"
LATENCY_TASK = "bench.latency"
ASYNC_LATENCY_TASK = "bench.latency_async"
_recorder = _latency.from_environment()

_first: list[float] = []


def first_call() -> float | None:
    """Wall-clock time of the first no-op call in this process, if any ran."""
    return _first[0] if _first else None


@task(name=SYNC_TASK)
def noop() -> None:
    """Do nothing (a sync task)."""
    if not _first:
        _first.append(time.time())


@task(name=ASYNC_TASK)
async def noop_async() -> None:
    """Do nothing (a coroutine task)."""
    if not _first:
        _first.append(time.time())


@task(name=LATENCY_TASK)
def latency(sent_ns: int) -> None:
    """Record the enqueue-to-start latency of this job (a sync task)."""
    if _recorder is not None:
        _recorder.record(sent_ns)


@task(name=ASYNC_LATENCY_TASK)
async def latency_async(sent_ns: int) -> None:
    """Record the enqueue-to-start latency of this job (a coroutine task)."""
    if _recorder is not None:
        _recorder.record(sent_ns)
