"""WORKERS.md, "Worker Types: Async Worker", runnable.

Run from this folder with ``python async_worker.py``. The broker is ``UNO_JOBS_BROKER_URL``
if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: a coroutine task, a queue, twenty jobs that can only finish
when all of them run at once, and the shutdown.
"""

from __future__ import annotations

import asyncio

from uno_jobs import Queue
from uno_jobs.tasks import task

JOBS = 20
running = 0
all_running = asyncio.Event()


@task(name="spec.async_worker.fetch")
async def fetch(n: int) -> int:
    """IO-bound work: waits (without blocking the loop) until JOBS jobs are running."""
    global running
    running += 1
    if running == JOBS:
        all_running.set()
    await asyncio.wait_for(all_running.wait(), timeout=20)
    return n * n


async def main() -> None:
    # --- spec block (verbatim) ---
    from uno_jobs.worker import AsyncWorker

    worker = AsyncWorker(queue_name="default", worker_id="async-worker-1", max_concurrent=50)
    await worker.start()
    # --- end of spec block ---

    queue = Queue("default")
    try:
        jobs = [await queue.enqueue(fetch, args=[n]) for n in range(JOBS)]
        results = [await job.wait(timeout=30) for job in jobs]
        assert results == [n * n for n in range(JOBS)], results
        print(f"{JOBS} jobs ran concurrently on one event loop; results: {results[:5]} ...")
        metrics = await worker.get_metrics()
        print("metrics:", metrics)
        assert metrics["jobs_succeeded"] == JOBS, metrics
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
