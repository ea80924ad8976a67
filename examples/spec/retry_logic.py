"""WORKERS.md, "Error Handling: Retry Logic", runnable.

Run from this folder with ``python retry_logic.py``. The broker is ``UNO_JOBS_BROKER_URL``
if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: the ``task`` import, a queue and a worker, one job of the
task, and a look at the store after its first attempt. The block's task body is ``...``,
which cannot fail; the failure it stands for comes from a middleware added here,
``FlakyDependency``, whose ``before_execution`` raises on a job's first attempt (an
exception there fails the attempt like a task error, and is retried the same way).

The task's policy (``max_retries=3, retry_delay=60``) then schedules attempt 2 for 60
seconds later. The job is ``scheduled`` in the store, with its failed attempt recorded,
and the retry waits in the store's schedule, not in the worker's memory. The example does
not wait the minute: it takes the schedule entry out to show its due time, puts it back
as it was, and stops the worker. A worker that consumes ``default`` and knows the task
runs attempt 2 when it is due.
"""

# mypy: disable-error-code="no-untyped-def"
# (the spec block's functions carry no annotations)

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from uno_jobs import JobStatus, Queue
from uno_jobs.middleware import JobView, Middleware
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker

T = TypeVar("T")


class FlakyDependency(Middleware):
    """Fails each job's first attempt, as a dependency that is briefly down would."""

    async def before_execution(self, job: JobView, task_func: Callable[..., Any]) -> None:
        if job["attempt"] == 1:
            raise ConnectionError("the database did not answer")


async def poll(what: str, get: Callable[[], Awaitable[T | None]], timeout: float = 30) -> T:
    """``await get()`` until it returns something, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (value := await get()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:g} s")
        await asyncio.sleep(0.02)
    return value


async def main() -> None:
    worker = AsyncWorker(
        queue_name="default", worker_id="retry-worker", middleware=[FlakyDependency()]
    )
    await worker.start()
    queue = Queue("default")
    try:
        # fmt: off
        # --- spec block (verbatim) ---
        @task(max_retries=3, retry_delay=60)
        async def task_with_retries():
            ...  # retried up to 3 times with 60 second delays
        # --- end of spec block ---
        # fmt: on

        print(
            f"max_retries={task_with_retries.max_retries}, "
            f"retry_delay={task_with_retries.retry_delay:g} s"
        )
        job = await queue.enqueue(task_with_retries)

        async def scheduled() -> Any:
            record = await queue.get_job(job.id)
            return record if record.status == JobStatus.SCHEDULED else None

        record = await poll("the job scheduled for a retry", scheduled)
        print(f"attempt 1 failed: {record.error_type}: {record.error_message}")
        print(f"status: {record.status}, attempts: {record.attempts}")
        assert record.attempts == 1, record
        assert record.error_message and "ConnectionError" in record.error_message, record

        # The store has no read-only look at one schedule entry: take it out, put it back.
        store = queue.store
        entry = await poll(
            "the schedule entry",
            lambda: asyncio.to_thread(store.unschedule, job.id, time.time()),
        )
        await asyncio.to_thread(store.schedule, entry)
        due_in = entry.due_at - time.time()
        due = datetime.fromtimestamp(entry.due_at, timezone.utc)
        print(f"attempt 2 due in {due_in:.0f} s, at {due:%H:%M:%S} UTC")
        assert 55 < due_in <= 60, due_in
        assert worker.state == "running", worker.state
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
