"""WORKERS.md, "Advanced Features: Graceful Shutdown", runnable.

Run from this folder with ``python graceful_shutdown.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: the names it uses (``asyncio``, ``worker``), a slow job, a
SIGTERM sent to this process while the job runs, a check that the job finished (graceful)
and the worker stopped, and a call of the block's ``shutdown_handler``.

Note: the block's handler calls ``asyncio.create_task`` from a ``signal.signal`` handler.
Python runs such a handler between bytecodes, and a task created there is only picked up
when the event loop next wakes: the added code below keeps it awake by polling. In an
application, ``await worker.run()`` (or ``loop.add_signal_handler``) is the robust way.
"""

from __future__ import annotations

import asyncio
import os
import time

from uno_jobs import JobStatus, Queue
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker

started = asyncio.Event()


@task(name="spec.graceful_shutdown.slow")
async def slow(seconds: float) -> str:
    started.set()
    await asyncio.sleep(seconds)
    return f"slept {seconds} s"


async def main() -> None:
    worker = AsyncWorker(queue_name="default", worker_id="graceful-worker", shutdown_timeout=30)

    # fmt: off
    # --- spec block (verbatim) ---
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, f: asyncio.create_task(worker.shutdown()))

    await worker.start()

    async def shutdown_handler():
        print("Shutting down worker...")
        await worker.shutdown()
        print("Worker shutdown complete")
    # --- end of spec block ---
    # fmt: on

    queue = Queue("default")
    try:
        job = await queue.enqueue(slow, args=[1.0])
        await asyncio.wait_for(started.wait(), timeout=30)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while worker.state != "stopped" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert worker.state == "stopped", worker.state
        record = await queue.get_job(job.id)
        assert record.status == JobStatus.SUCCEEDED, record.status
        print(f"SIGTERM: the running job finished ({record.result}), then the worker stopped")
        await shutdown_handler()
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
