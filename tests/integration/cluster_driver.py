"""One DistributedWorker in its own OS process, for the cluster tests.

Usage: ``python cluster_driver.py QUEUE WORKER_ID CLUSTER_ID COORDINATOR_URL BEAT``; the
broker comes from ``UNO_JOBS_BROKER_URL``. Runs until SIGTERM (or SIGKILL).
"""

from __future__ import annotations

import asyncio
import logging
import sys

import cluster_tasks  # noqa: F401 - registers the cluster.* tasks

from uno_jobs.worker import DistributedWorker


async def main(queue: str, worker_id: str, cluster_id: str, url: str, beat: float) -> int:
    worker = DistributedWorker(
        queue_name=queue,
        worker_id=worker_id,
        cluster_id=cluster_id,
        coordinator_url=url,
        cluster_heartbeat_interval=beat,
        max_concurrent=2,
        batch_size=2,
    )
    return await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    queue, worker_id, cluster_id, url, beat = sys.argv[1:6]
    sys.exit(asyncio.run(main(queue, worker_id, cluster_id, url, float(beat))))
