"""WORKERS.md, "Error Handling: Timeout Handling", runnable.

Run from this folder with ``python timeout_handling.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: the ``task`` import, a queue and a worker whose
``max_job_duration`` is 1.5 seconds, a second task declared like the block's but whose
body runs for 30 seconds, one job of each, and a look at what the worker recorded.

A job's time limit is the smaller of the task's ``timeout`` and the worker's
``max_job_duration``: 1.5 seconds here, so the example shows a termination without
waiting five minutes. The block's task, whose body is ``...``, finishes at once, well
within it. The long one is stopped after 1.5 seconds; it has no retries (the default
``max_retries`` is 0), so its job ends ``failed`` with ``JobTimeLimitExceeded``, and the
worker goes on.
"""

# mypy: disable-error-code="no-untyped-def"
# (the spec block's functions carry no annotations)

from __future__ import annotations

import asyncio

from uno_jobs import JobFailedError, JobStatus, Queue
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker

MAX_JOB_DURATION = 1.5


async def main() -> None:
    worker = AsyncWorker(
        queue_name="default", worker_id="timeout-worker", max_job_duration=MAX_JOB_DURATION
    )
    await worker.start()
    queue = Queue("default")
    try:
        # fmt: off
        # --- spec block (verbatim) ---
        @task(timeout=300)  # 5 minute timeout
        async def long_running_task():
            ...  # if this task exceeds 5 minutes, it will be terminated
        # --- end of spec block ---
        # fmt: on

        @task(timeout=300)
        async def task_that_overruns():
            await asyncio.sleep(30)

        quick = await queue.enqueue(long_running_task)
        result = await quick.wait(timeout=30)
        print(f"long_running_task: {(await queue.get_job(quick.id)).status}, result {result}")

        job = await queue.enqueue(task_that_overruns)
        try:
            await job.wait(timeout=30)
        except JobFailedError as exc:
            print(f"job.wait() raised JobFailedError: {exc}")
        else:
            raise AssertionError("the overrunning task's job did not fail")

        record = await queue.get_job(job.id)
        assert record.started_at is not None and record.finished_at is not None, record
        ran = record.finished_at - record.started_at
        print(f"status: {record.status}, attempts: {record.attempts}")
        print(f"error: {record.error_type}: {record.error_message}")
        print(
            f"stopped after {ran:.1f} s: the smaller of timeout={task_that_overruns.timeout:g} "
            f"and max_job_duration={MAX_JOB_DURATION:g}"
        )
        assert record.status == JobStatus.FAILED, record
        assert record.error_type == "JobTimeLimitExceeded", record
        assert MAX_JOB_DURATION <= ran < 10, ran
        assert worker.state == "running", worker.state
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
