"""WORKERS.md, "Task Discovery: Task Registry", runnable.

Run from this folder with ``python task_discovery_registry.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: a queue and a worker, a second job whose handle is kept so
its record can be shown, and the shutdown. The task's body is the block's ``...``, so the
job succeeds with the result ``None``.
"""

# mypy: disable-error-code="no-untyped-def"
# (the spec block's functions carry no annotations)

# ruff: noqa: I001  (the spec block imports "task, TaskRegistry" in that order)

from __future__ import annotations

import asyncio
import time

from uno_jobs import JobStatus, Queue
from uno_jobs.tasks import get_default_registry
from uno_jobs.worker import AsyncWorker


async def main() -> None:
    worker = AsyncWorker(queue_name="default", worker_id="registry-worker")
    await worker.start()
    queue = Queue("default")
    try:
        # fmt: off
        # --- spec block (verbatim) ---
        from uno_jobs.tasks import task, TaskRegistry

        @task(name="generate_report")
        async def generate_monthly_report(report_type, format):
            ...

        await queue.enqueue(task="generate_report", args=["monthly", "pdf"])
        # --- end of spec block ---
        # fmt: on

        registry = get_default_registry()
        assert isinstance(registry, TaskRegistry)
        print(f"registered as 'generate_report': {registry.get('generate_report')!r}")
        assert registry.get("generate_report") is generate_monthly_report

        job = await queue.enqueue(task="generate_report", args=["weekly", "csv"])
        result = await job.wait(timeout=30)
        record = await queue.get_job(job.id)
        print(f"job {record.id}: task {record.task!r}, {record.status}, result {result!r}")
        assert record.status == JobStatus.SUCCEEDED and record.task == "generate_report"

        # The block's own job: no handle, so wait until the worker has finished two jobs.
        deadline = time.monotonic() + 30
        metrics = await worker.get_metrics()
        while metrics["jobs_processed_total"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            metrics = await worker.get_metrics()
        print(f"jobs succeeded: {metrics['jobs_succeeded']} of 2")
        assert metrics["jobs_succeeded"] == 2, metrics
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
