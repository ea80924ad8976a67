"""WORKERS.md, "Worker Configuration", runnable.

Run from this folder with ``python worker_configuration.py``. The broker is
``UNO_JOBS_BROKER_URL`` if set, else the embedded broker under ``UNO_JOBS_HOME``.

Added around the spec block: ``logging_middleware`` (which the block names but does not
define), a task, starting the worker, five jobs, the health and metrics the options feed,
and the shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from uno_jobs import Queue
from uno_jobs.middleware import JobView, Middleware
from uno_jobs.tasks import task

log = logging.getLogger("my_app.jobs")

HEALTH_KEYS = {
    "status",
    "uptime",
    "jobs_processed",
    "failure_rate",
    "current_jobs",
    "last_job_completed",
}
METRICS_KEYS = {
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
}


class JobLogger(Middleware):
    """Logs every job the worker starts and finishes."""

    async def before_execution(self, job: JobView, task_func: Callable[..., Any]) -> None:
        log.info("job %s (%s) starting on %s", job["id"], job["task"], job["worker_id"])

    async def after_execution(
        self, job: JobView, task_func: Callable[..., Any], result: Any
    ) -> Any:
        log.info("job %s (%s) succeeded: %r", job["id"], job["task"], result)
        return result


logging_middleware = JobLogger()


@task(name="spec.worker_configuration.word_count")
async def word_count(text: str) -> int:
    return len(text.split())


async def main() -> None:
    # fmt: off
    # --- spec block (verbatim) ---
    from uno_jobs.worker import AsyncWorker

    worker = AsyncWorker(
        # Basic configuration
        queue_name="default",              # Queue to process
        worker_id="worker-1",              # Unique worker identifier
        # Concurrency settings
        max_concurrent=20,                 # Maximum concurrent jobs
        batch_size=10,                     # Jobs to fetch at once
        # Processing settings
        shutdown_timeout=30,               # Seconds to wait for graceful shutdown
        poll_interval=1.0,                 # Seconds between polling when queue is empty
        prefetch=True,                     # Whether to prefetch next jobs
        # Reliability settings
        heartbeat_interval=30,             # Seconds between worker heartbeats
        max_job_duration=3600,             # Maximum job runtime in seconds
        # Health check settings
        healthcheck_interval=60,           # Seconds between health checks
        # Middleware
        middleware=[logging_middleware],   # Processing middleware
        # Error handling
        max_failures=100,                  # Max consecutive failures before shutdown
        # Monitoring
        metrics_enabled=True,              # Whether to collect metrics
        metrics_interval=10,               # Seconds between metrics collection
    )
    # --- end of spec block ---
    # fmt: on

    print("options:", worker.options.model_dump(exclude={"middleware"}, exclude_none=True))
    await worker.start()
    queue = Queue("default")
    try:
        texts = ["one", "two words", "three little words", "a b c d", "e f g h i"]
        jobs = [await queue.enqueue(word_count, args=[text]) for text in texts]
        results = [await job.wait(timeout=30) for job in jobs]
        print("results:", results)
        assert results == [1, 2, 3, 4, 5], results

        health = await worker.get_health()
        metrics = await worker.get_metrics()
        print("health:", health)
        print("metrics:", metrics)
        assert set(health) == HEALTH_KEYS, sorted(health)
        assert set(metrics) == METRICS_KEYS, sorted(metrics)
        assert health["status"] == "healthy" and health["jobs_processed"] == len(texts), health
        assert metrics["jobs_succeeded"] == len(texts), metrics
    finally:
        await worker.shutdown()
        queue.close()
    print("done")


if __name__ == "__main__":
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main())
