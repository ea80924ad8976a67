"""WORKERS.md, "Scaling and Distribution: Specialized Workers", runnable.

Run from this folder with ``python specialized_workers.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: a task, starting the three workers, one job per priority
level, a check that each job ran on the worker that serves its level, and the shutdown.
"""

from __future__ import annotations

import asyncio

from uno_jobs import Queue
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker


@task(name="spec.specialized_workers.which")
def which(level: str) -> str:
    return level


async def main() -> None:
    # fmt: off
    # --- spec block (verbatim) ---
    critical_worker = AsyncWorker(queue_name="default", worker_id="critical-worker",
                                  priority_levels=["critical"])
    standard_worker = AsyncWorker(queue_name="default", worker_id="standard-worker",
                                  priority_levels=["high", "normal"])
    background_worker = AsyncWorker(queue_name="default", worker_id="background-worker",
                                    priority_levels=["low"])
    # --- end of spec block ---
    # fmt: on

    workers = [critical_worker, standard_worker, background_worker]
    expected = {
        "critical": "critical-worker",
        "high": "standard-worker",
        "normal": "standard-worker",
        "low": "background-worker",
    }
    queue = Queue("default")
    try:
        for worker in workers:
            await worker.start()
        jobs = {
            level: [await queue.enqueue(which, args=[level], priority=level) for _ in range(3)]
            for level in expected
        }
        for level, level_jobs in jobs.items():
            for job in level_jobs:
                assert await job.wait(timeout=30) == level
                record = await queue.get_job(job.id)
                assert record.worker_id == expected[level], (level, record.worker_id)
            print(f"{level} jobs ran on {expected[level]}")
    finally:
        for worker in workers:
            await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
