"""WORKERS.md, "Error Handling: Exception Handling", runnable.

Run from this folder with ``python exception_handling.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: the ``task`` import, a queue and a worker, one job of the
failing task, and a look at what the worker recorded. The task has no retries (the
default ``max_retries`` is 0), so its one failed attempt ends the job ``failed``.

The bare ``@task`` names a task after where it is defined: inside ``main()`` here, so its
name is ``__main__.main.<locals>.task_that_might_fail``. A worker in this process finds
it in the registry; for workers in other processes, define tasks at module level in an
importable module (see ``my_app/tasks/reports.py``).
"""

# mypy: disable-error-code="no-untyped-def"
# (the spec block's functions carry no annotations)

from __future__ import annotations

import asyncio

from uno_jobs import JobFailedError, JobStatus, Queue
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker


async def main() -> None:
    worker = AsyncWorker(queue_name="default", worker_id="errors-worker")
    await worker.start()
    queue = Queue("default")
    try:
        # fmt: off
        # --- spec block (verbatim) ---
        @task
        async def task_that_might_fail():
            raise ValueError("Something went wrong")
        # The worker will catch the exception, record it, and handle retries
        # --- end of spec block ---
        # fmt: on

        job = await queue.enqueue(task_that_might_fail)
        try:
            await job.wait(timeout=30)
        except JobFailedError as exc:
            print(f"job.wait() raised JobFailedError: {exc}")
        else:
            raise AssertionError("the failing task's job did not fail")

        record = await queue.get_job(job.id)
        print(f"task: {record.task}")
        print(f"status: {record.status}, attempts: {record.attempts}")
        print(f"error: {record.error_type}: {record.error_message}")
        assert record.status == JobStatus.FAILED, record
        assert record.error_type == "ValueError", record
        assert record.error_message == "Something went wrong", record
        assert record.error_traceback and "raise ValueError" in record.error_traceback
        health = await worker.get_health()
        print(f"worker still {health['status']}, failure_rate {health['failure_rate']}")
        assert worker.state == "running", worker.state
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
