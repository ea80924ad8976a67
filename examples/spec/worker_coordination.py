"""WORKERS.md, "Advanced Features: Worker Coordination", runnable.

Run from this folder with ``python worker_coordination.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``; the
coordinator is the Redis at ``localhost:6379/0`` that the block names (its keys go under
``UNO_JOBS_CLUSTER_KEY_PREFIX`` if set, so that runs can be kept apart).

Added around the spec block: the worker it registers (an ``AsyncWorker``, started before),
the membership, a cluster-wide pause (a job enqueued meanwhile waits) and resume, then a
cluster-wide shutdown that stops the worker.
"""

from __future__ import annotations

import asyncio

from uno_jobs import Queue
from uno_jobs.tasks import task
from uno_jobs.worker import AsyncWorker


@task(name="spec.worker_coordination.greet")
async def greet(name: str) -> str:
    return f"hello, {name}"


async def wait_for_state(worker: AsyncWorker, state: str) -> None:
    async def poll() -> None:
        while worker.state != state:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), 10)


async def main() -> None:
    worker = AsyncWorker(queue_name="default", worker_id="coordinated-worker-1")
    await worker.start()

    # fmt: off
    # --- spec block (verbatim) ---
    from uno_jobs.worker import WorkerCoordinator

    coordinator = WorkerCoordinator(storage_url="redis://localhost:6379/0",
                                    cluster_id="production-cluster")
    await coordinator.register_worker(worker)
    await coordinator.start()
    # --- end of spec block ---
    # fmt: on

    queue = Queue("default")
    try:
        for member in await coordinator.members():
            print(f"member: {member.worker_id} {member.type} {member.state} on {member.queue}")

        await coordinator.pause()  # every worker of the cluster
        await wait_for_state(worker, "paused")
        job = await queue.enqueue(greet, args=["cluster"])
        await asyncio.sleep(0.5)  # shows that nothing runs it while paused
        record = await queue.get_job(job.id)
        assert record is not None
        print(f"paused by the cluster: job {record.status}")
        assert record.status == "queued", record.status

        await coordinator.resume()
        print(f"resumed: {await job.wait(timeout=30)!r}")

        await coordinator.shutdown()
        await asyncio.wait_for(worker.wait_stopped(), 30)
        print(f"cluster shutdown: worker {worker.state}")
    finally:
        await coordinator.stop()
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
