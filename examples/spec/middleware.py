"""WORKERS.md, "Middleware", runnable.

Run from this folder with ``python middleware.py``. The broker is ``UNO_JOBS_BROKER_URL``
if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: the ``AsyncWorker`` import, two tasks (one succeeds, one
raises), starting the worker, one job of each, and the shutdown. The middleware prints
"Starting job", "Completed job" for the first and "Starting job", "Error in job" for the
second.
"""

# mypy: disable-error-code="no-untyped-def"
# (the spec block's functions carry no annotations)

# ruff: noqa: E501  (the spec block's last line is 102 characters long here)

from __future__ import annotations

import asyncio

from uno_jobs import JobFailedError, Queue
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker


@task(name="spec.middleware.greet")
async def greet(name: str) -> str:
    return f"hello, {name}"


@task(name="spec.middleware.explode")
async def explode(why: str) -> None:
    raise RuntimeError(why)


async def main() -> None:
    # fmt: off
    # --- spec block (verbatim) ---
    from uno_jobs.middleware import Middleware

    class LoggingMiddleware(Middleware):
        async def before_execution(self, job, task_func):
            print(f"Starting job {job['id']}")
            return await super().before_execution(job, task_func)

        async def after_execution(self, job, task_func, result):
            print(f"Completed job {job['id']}")
            return await super().after_execution(job, task_func, result)

        async def on_error(self, job, task_func, exception):
            print(f"Error in job {job['id']}: {exception}")
            return await super().on_error(job, task_func, exception)

    worker = AsyncWorker(queue_name="default", worker_id="worker-1", middleware=[LoggingMiddleware()])
    # --- end of spec block ---
    # fmt: on

    await worker.start()
    queue = Queue("default")
    try:
        ok = await queue.enqueue(greet, args=["world"])
        print(f"ok job: {ok.id}")
        result = await ok.wait(timeout=30)
        print(f"ok job result: {result!r}")
        assert result == "hello, world", result

        bad = await queue.enqueue(explode, args=["kaboom"])
        print(f"failing job: {bad.id}")
        try:
            await bad.wait(timeout=30)
        except JobFailedError as exc:
            print(f"failing job outcome: {exc.status} ({exc.error_type}: {exc.error_message})")
            assert exc.error_type == "RuntimeError", exc
        else:
            raise AssertionError("the failing job succeeded")
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
