"""WORKERS.md, "Worker Types: Distributed Worker", runnable.

Run from this folder with ``python distributed_worker.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``; the
coordinator is the Redis at ``localhost:6379/0`` that the block names (its keys go under
``UNO_JOBS_CLUSTER_KEY_PREFIX`` if set, so that runs can be kept apart).

Added around the spec block: a task, five jobs, the cluster's membership as the worker
reports it (it is the only member, so the leader), a second worker refused because it
asks for the same id, and the shutdown, after which the worker has left the cluster.
"""

from __future__ import annotations

import asyncio

from uno_jobs import Queue
from uno_jobs.errors import WorkerIdInUseError
from uno_jobs.tasks import task
from uno_jobs.worker import WorkerCoordinator


@task(name="spec.distributed_worker.double")
async def double(n: int) -> int:
    return 2 * n


async def main() -> None:
    # --- spec block (verbatim) ---
    from uno_jobs.worker import DistributedWorker

    worker = DistributedWorker(
        queue_name="default",
        worker_id="distributed-worker-1",
        cluster_id="cluster-1",
        coordinator_url="redis://localhost:6379/0",
    )
    await worker.start()
    # --- end of spec block ---

    queue = Queue("default")
    try:
        jobs = [await queue.enqueue(double, args=[n]) for n in range(5)]
        results = [await job.wait(timeout=30) for job in jobs]
        print(f"results: {results}")
        assert results == [0, 2, 4, 6, 8], results

        for member in await worker.coordinator.members():
            leader = "leader" if member.leader else "follower"
            print(f"member: {member.worker_id} {member.type} {member.state} {leader}")
        assert worker.coordinator.is_leader

        twin = DistributedWorker(
            queue_name="default",
            worker_id="distributed-worker-1",
            cluster_id="cluster-1",
            coordinator_url="redis://localhost:6379/0",
        )
        try:
            await twin.start()
            raise AssertionError("a second worker with a live id was let in")
        except WorkerIdInUseError as exc:
            print(f"second worker refused: {exc}")
    finally:
        await worker.shutdown()
        queue.close()
    viewer = WorkerCoordinator(worker.coordinator_url, "cluster-1")
    try:
        members = await viewer.members()
        print(f"members after shutdown: {len(members)}, leader: {await viewer.leader()}")
        assert members == [] and await viewer.leader() is None
    finally:
        await viewer.stop()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
