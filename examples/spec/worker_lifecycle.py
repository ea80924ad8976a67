"""WORKERS.md, "Worker Lifecycle", runnable.

Run from this folder with ``python worker_lifecycle.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

The spec block is five calls in a row. Its lines are kept verbatim and in order; between
them, under ``# + added:`` comments, a job shows what each call changed: a job runs while
the worker runs, waits while it is paused, runs after ``resume``, and a job still running
at ``shutdown`` is finished before the worker stops.
"""

from __future__ import annotations

import asyncio
import time

from uno_jobs import JobStatus, JobTimeoutError, Queue
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker


@task(name="spec.worker_lifecycle.echo")
async def echo(value: str, hold: float = 0.0) -> str:
    """Return ``value`` after ``hold`` seconds."""
    await asyncio.sleep(hold)
    return value


async def wait_for_status(queue: Queue, job_id: str, status: JobStatus) -> None:
    """Poll the job's record until it has ``status``; fail after 15 seconds."""
    deadline = time.monotonic() + 15
    while (await queue.get_job(job_id)).status != status:
        assert time.monotonic() < deadline, f"job {job_id} never reached {status}"
        await asyncio.sleep(0.01)


async def main() -> None:
    worker = AsyncWorker(queue_name="default", worker_id="lifecycle-worker")
    queue = Queue("default")
    try:
        # fmt: off
        # --- spec block (verbatim; added lines between its lines start at "# + added") ---
        await worker.start()               # Start the worker
        # + added: a job runs while the worker is running.
        job = await queue.enqueue(echo, args=["ran while running"])
        print(f"{worker.state}: {await job.wait(timeout=30)}")

        await worker.pause()               # Pause processing
        # + added: a job enqueued now waits on the broker.
        held = await queue.enqueue(echo, args=["ran after resume"])
        try:
            await held.wait(timeout=1.0)
        except JobTimeoutError:
            pass
        else:
            raise AssertionError("a paused worker ran a job")
        status = (await queue.get_job(held.id)).status
        print(f"{worker.state}: job {status} while the worker is paused")
        assert status == JobStatus.QUEUED, status

        await worker.resume()              # Resume processing
        # + added: the held job runs now; another one is still running at shutdown.
        print(f"{worker.state}: {await held.wait(timeout=30)}")
        slow = await queue.enqueue(
            echo, args=["finished during graceful shutdown"], kwargs={"hold": 0.5}
        )
        await wait_for_status(queue, slow.id, JobStatus.RUNNING)

        await worker.shutdown()            # Gracefully shutdown
        # + added: the running job was completed before the worker stopped.
        record = await queue.get_job(slow.id)
        print(f"{worker.state}: job {record.status}: {record.result}")
        assert record.status == JobStatus.SUCCEEDED, record

        await worker.shutdown(wait=False)  # Force immediate shutdown (not recommended)
        # --- end of spec block ---
        # fmt: on
        print(f"{worker.state}: a second shutdown of a stopped worker does nothing")
        assert worker.state == "stopped", worker.state
    finally:
        await worker.shutdown(wait=False)
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
