"""WORKERS.md, "Worker Types: Synchronous Worker", runnable.

Run from this folder with ``python sync_worker.py``. The broker is ``UNO_JOBS_BROKER_URL``
if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: a task, a queue, five jobs to wait for, a check that they ran
one at a time, and the shutdown.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from uno_jobs import Queue
from uno_jobs.tasks import task


@task(name="spec.sync_worker.multiply")
def multiply(a: int, b: int) -> int:
    """Blocking work; long enough that two overlapping runs would show in the timings."""
    time.sleep(0.05)
    return a * b


async def main() -> None:
    # --- spec block (verbatim) ---
    from uno_jobs.worker import SyncWorker

    worker = SyncWorker(queue_name="default", worker_id="sync-worker-1")
    await worker.start()
    # --- end of spec block ---

    queue = Queue("default")
    try:
        jobs = [await queue.enqueue(multiply, args=[i, 10]) for i in range(5)]
        results = [await job.wait(timeout=30) for job in jobs]
        print("results:", results)
        assert results == [0, 10, 20, 30, 40], results

        records = [await queue.get_job(job.id) for job in jobs]
        assert {r.worker_id for r in records} == {"sync-worker-1"}
        spans = sorted((r.started_at or 0.0, r.finished_at or 0.0) for r in records)
        overlaps = sum(1 for (_, end), (start, _) in itertools.pairwise(spans) if start < end)
        print(f"jobs run by sync-worker-1, overlapping runs: {overlaps}")
        assert overlaps == 0, f"a SyncWorker ran {overlaps} jobs at the same time"
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
