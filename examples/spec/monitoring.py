"""WORKERS.md, "Monitoring and Health Checks", runnable.

Run from this folder with ``python monitoring.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: a worker, a task, ten jobs (one of which fails on purpose,
so the rates are not all zero), and checks that ``get_health()`` and ``get_metrics()``
return exactly the spec's keys with the values those jobs imply. The definitions of each
value are in the README ("Observability") and ``uno_jobs/metrics.py``.
"""

# ruff: noqa: E501
# (the spec block's comment lines are longer than the line limit; they stay verbatim)

from __future__ import annotations

import asyncio
import contextlib
import re

from uno_jobs import JobFailedError, Queue, task
from uno_jobs.worker import AsyncWorker

HEALTH_KEYS = [
    "status",
    "uptime",
    "jobs_processed",
    "failure_rate",
    "current_jobs",
    "last_job_completed",
]
METRICS_KEYS = [
    "jobs_processed_total",
    "jobs_succeeded",
    "jobs_failed",
    "processing_time_avg_ms",
    "processing_time_p95_ms",
    "processing_time_p99_ms",
    "queue_wait_time_avg_ms",
    "throughput_jobs_per_minute",
    "error_rate",
    "active_jobs",
]


@task(name="spec.monitoring.resize")
async def resize(image: int) -> int:
    await asyncio.sleep(0.01)
    if image == 7:
        raise ValueError("image 7 is corrupt")
    return image


async def main() -> None:
    worker = AsyncWorker(queue_name="default", worker_id="monitored-worker")
    await worker.start()
    queue = Queue("default")
    try:
        jobs = [await queue.enqueue(resize, [i]) for i in range(10)]
        for job in jobs:
            with contextlib.suppress(JobFailedError):  # image 7 fails on purpose
                await job.wait(timeout=30)

        # --- spec block (verbatim) ---
        health = await worker.get_health()
        # {"status": "healthy", "uptime": 3600, "jobs_processed": 150, "failure_rate": 0.02,
        #  "current_jobs": 5, "last_job_completed": "2023-04-12T10:00:00Z"}

        metrics = await worker.get_metrics()
        # {"jobs_processed_total": 1500, "jobs_succeeded": 1450, "jobs_failed": 50,
        #  "processing_time_avg_ms": 120, "processing_time_p95_ms": 350, "processing_time_p99_ms": 850,
        #  "queue_wait_time_avg_ms": 200, "throughput_jobs_per_minute": 25, "error_rate": 0.033,
        #  "active_jobs": 10}
        # --- end of spec block ---

        print(f"health: {health}")
        print(f"metrics: {metrics}")
        assert list(health) == HEALTH_KEYS, list(health)
        assert list(metrics) == METRICS_KEYS, list(metrics)
        assert health["status"] == "healthy", health
        assert isinstance(health["uptime"], int), health
        assert health["jobs_processed"] == 10 and health["current_jobs"] == 0, health
        assert health["failure_rate"] == 0.1, health
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", health["last_job_completed"])
        assert (metrics["jobs_succeeded"], metrics["jobs_failed"]) == (9, 1), metrics
        assert metrics["processing_time_p99_ms"] >= metrics["processing_time_p95_ms"] >= 10
        assert metrics["queue_wait_time_avg_ms"] > 0, metrics
        assert metrics["throughput_jobs_per_minute"] == 10, metrics
        assert metrics["error_rate"] == 0.1 and metrics["active_jobs"] == 0, metrics
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
