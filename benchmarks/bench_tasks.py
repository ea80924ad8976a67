"""The uno_jobs no-op tasks the benchmark workers run.

Each records only the wall-clock time of the first call in its process (one ``is None``
test per job), so the runner can also report first-job-to-last-job time, the figure the
Celery and Dramatiq runs are measured by.
"""

from __future__ import annotations

import time

from uno_jobs import task

__all__ = ["ASYNC_TASK", "SYNC_TASK", "first_call", "noop", "noop_async"]

SYNC_TASK = "bench.noop"
ASYNC_TASK = "bench.noop_async"

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
