"""WORKERS.md, "Worker Types: Thread Pool Worker", runnable.

Run from this folder with ``python thread_pool_worker.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: a blocking task, a queue, ten jobs, a check that they ran in
several threads at once, and the shutdown.
"""

from __future__ import annotations

import asyncio
import threading

from uno_jobs import Queue
from uno_jobs.tasks import task

GROUP = 5
# Each job waits here until GROUP jobs are waiting: it only completes if the pool really
# runs GROUP jobs at the same time (a one-thread worker would break the barrier).
barrier = threading.Barrier(GROUP, timeout=20)


@task(name="spec.thread_pool_worker.rendezvous")
def rendezvous(n: int) -> dict[str, object]:
    """Blocking work that needs GROUP of its jobs running at once."""
    barrier.wait()
    return {"n": n, "thread": threading.current_thread().name}


async def main() -> None:
    # --- spec block (verbatim) ---
    from uno_jobs.worker import ThreadPoolWorker

    worker = ThreadPoolWorker(queue_name="default", worker_id="thread-worker-1", max_threads=10)
    await worker.start()
    # --- end of spec block ---

    queue = Queue("default")
    try:
        jobs = [await queue.enqueue(rendezvous, args=[n]) for n in range(2 * GROUP)]
        results = [await job.wait(timeout=30) for job in jobs]
        assert [r["n"] for r in results] == list(range(2 * GROUP)), results
        threads = sorted({str(r["thread"]) for r in results})
        print(f"{len(results)} jobs completed, {GROUP} at a time, in {len(threads)} threads")
        assert len(threads) >= GROUP, threads
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
