"""WORKERS.md, "Worker Types: Process Pool Worker", runnable.

Run from this folder with ``python process_pool_worker.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: a CPU-bound task, a queue, eight jobs that only complete if
four of them run at once in four different processes, a check that none ran in this
process, and the shutdown. The worker's children import this file again (as
``__mp_main__``) to find the task, which is why ``main()`` runs only under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from uno_jobs import Queue
from uno_jobs.tasks import task

GROUP = 4


@task(name="spec.process_pool_worker.crunch")
def crunch(n: int, rendezvous: str) -> dict[str, int]:
    """CPU-bound work, started only once GROUP jobs (in GROUP processes) have arrived."""
    folder = Path(rendezvous)
    (folder / str(os.getpid())).write_text(str(n))
    deadline = time.monotonic() + 20
    while len(list(folder.iterdir())) < GROUP:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(folder.iterdir()))} of {GROUP} jobs at once")
        time.sleep(0.01)
    total = sum(i * i for i in range(200_000 + n))
    return {"n": n, "pid": os.getpid(), "sum": total}


async def main() -> None:
    # --- spec block (verbatim) ---
    from uno_jobs.worker import ProcessPoolWorker

    worker = ProcessPoolWorker(queue_name="default", worker_id="process-worker-1", max_processes=4)
    await worker.start()
    # --- end of spec block ---

    queue = Queue("default")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            groups = [Path(tmp, "a"), Path(tmp, "b")]
            for folder in groups:
                folder.mkdir()
            jobs = [
                await queue.enqueue(crunch, args=[n, str(groups[n // GROUP])])
                for n in range(2 * GROUP)
            ]
            results = [await job.wait(timeout=30) for job in jobs]
        assert [r["n"] for r in results] == list(range(2 * GROUP)), results
        pids = {r["pid"] for r in results}
        assert os.getpid() not in pids, "a job ran in the worker process itself"
        print(f"{len(results)} jobs completed, {GROUP} at a time, in {len(pids)} child processes")
        assert len(pids) == GROUP, pids
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
