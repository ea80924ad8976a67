"""WORKERS.md, "Task Discovery: Module Path", runnable.

Run from this folder with ``python task_discovery_module_path.py`` (the ``my_app`` package
beside this file must be importable). The broker is ``UNO_JOBS_BROKER_URL`` if set, else
the embedded broker under ``UNO_JOBS_HOME``.

The block only enqueues. Added: the queue, and a worker allowed to import tasks from the
``my_app`` package. This script never imports ``my_app`` itself: the worker imports
``my_app.tasks.reports`` when the job names it, and would refuse a path outside ``my_app``.
"""

from __future__ import annotations

import asyncio
import sys
import time

from uno_jobs import Queue
from uno_jobs.worker import AsyncWorker


async def main() -> None:
    worker = AsyncWorker(
        queue_name="default", worker_id="reports-worker", allowed_modules=["my_app"]
    )
    await worker.start()
    queue = Queue("default")
    try:
        # --- spec block (verbatim) ---
        await queue.enqueue(task="my_app.tasks.reports.generate_report", args=["monthly", "pdf"])
        # --- end of spec block ---

        # The block drops the handle; a second enqueue keeps it to wait for the result.
        job = await queue.enqueue(
            task="my_app.tasks.reports.generate_report", args=["weekly", "csv"]
        )
        result = await job.wait(timeout=30)
        print(f"my_app.tasks.reports.generate_report('weekly', 'csv') -> {result!r}")
        assert result == "weekly-report.csv", result
        assert "my_app.tasks.reports" in sys.modules, "the worker did not import the module"
        # The block's own job: no handle, so wait until the worker has finished two jobs.
        metrics = await worker.get_metrics()
        deadline = time.monotonic() + 30
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
