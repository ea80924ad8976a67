"""WORKERS.md, "Scaling and Distribution: Worker Pool", runnable.

Run from this folder with ``python worker_pool.py``. The broker is ``UNO_JOBS_BROKER_URL``
if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: the ``AsyncWorker`` import, a task that answers with the pid
of the process that ran it, twenty jobs, which processes ran them (each member of the pool
is its own OS process; the members import this file, so they know the task), the pool's
aggregated metrics, and the shutdown, which drains every member.
"""

from __future__ import annotations

import asyncio
import os

from uno_jobs import Queue
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker

JOBS = 20


@task(name="spec.worker_pool.whoami")
async def whoami(n: int) -> int:
    await asyncio.sleep(0.05)
    return os.getpid()


async def main() -> None:
    # --- spec block (verbatim) ---
    from uno_jobs.worker import WorkerPool

    pool = WorkerPool(
        queue_name="default",
        worker_type=AsyncWorker,
        min_workers=5,
        max_workers=20,
        worker_options={"max_concurrent": 10, "heartbeat_interval": 30},
    )
    await pool.start(auto_scale=True)
    # --- end of spec block ---

    queue = Queue("default")
    try:
        print(f"pool started with {pool.size} member processes")
        jobs = [await queue.enqueue(whoami, args=[n]) for n in range(JOBS)]
        pids = {await job.wait(timeout=60) for job in jobs}
        assert os.getpid() not in pids, "a job ran in the pool's own process"
        print(f"{JOBS} jobs ran in member processes ({len(pids)} of them), none in this one")

        async def counted() -> dict[str, object]:
            while True:
                metrics = await pool.get_metrics()
                if metrics["jobs_processed_total"] == JOBS:
                    return metrics
                await asyncio.sleep(0.1)

        metrics = await asyncio.wait_for(counted(), 30)
        shown = {k: v for k, v in metrics.items() if k != "members"}
        print(f"metrics: {shown}")
    finally:
        await pool.shutdown()
        queue.close()
    print(f"after shutdown: {pool.size} members")
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
