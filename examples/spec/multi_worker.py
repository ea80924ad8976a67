"""WORKERS.md, "Scaling and Distribution: Multi-Worker Setup", runnable.

Run from this folder with ``python multi_worker.py``. The broker is ``UNO_JOBS_BROKER_URL``
if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: the ``AsyncWorker`` import, a task that counts its runs, 30
jobs, a check that every job ran exactly once, how the jobs spread over the three workers,
and the shutdown. Here the three workers share one process; started in three processes
(or on three hosts) they share the queue the same way.
"""

# ruff: noqa: E702  (the spec block starts each worker on the line that creates it)

from __future__ import annotations

import asyncio
from collections import Counter

from uno_jobs import Queue
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker

JOBS = 30
runs: Counter[int] = Counter()


@task(name="spec.multi_worker.square")
async def square(n: int) -> int:
    """Count the run, then take a moment, so that jobs overlap and spread."""
    runs[n] += 1
    await asyncio.sleep(0.02)
    return n * n


async def main() -> None:
    # fmt: off
    # --- spec block (verbatim) ---
    worker1 = AsyncWorker(queue_name="default", worker_id="worker-1"); await worker1.start()
    worker2 = AsyncWorker(queue_name="default", worker_id="worker-2"); await worker2.start()
    worker3 = AsyncWorker(queue_name="default", worker_id="worker-3"); await worker3.start()
    # --- end of spec block ---
    # fmt: on

    queue = Queue("default")
    try:
        jobs = [await queue.enqueue(square, args=[n]) for n in range(JOBS)]
        results = [await job.wait(timeout=30) for job in jobs]
        assert results == [n * n for n in range(JOBS)], results
        assert runs == Counter(range(JOBS)), f"some jobs ran more than once: {runs}"
        print(f"{JOBS} jobs, each run exactly once")

        records = [await queue.get_job(job.id) for job in jobs]
        spread = Counter(record.worker_id for record in records)
        for worker_id in ("worker-1", "worker-2", "worker-3"):
            print(f"{worker_id} ran {spread[worker_id]} jobs")
        assert sum(spread.values()) == JOBS and set(spread) <= {"worker-1", "worker-2", "worker-3"}
        # How the jobs spread depends on timing (and the first worker's prefetch), so it is
        # shown, not asserted.
        print(f"workers that ran jobs: {len(spread)}")
    finally:
        await asyncio.gather(worker1.shutdown(), worker2.shutdown(), worker3.shutdown())
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
