"""get_health() and get_metrics() hold their documented definitions on every worker type.

Process-pool jobs run in children; they are measured in the worker process, around the
child's run, so the same numbers come out. A job from a Celery producer carries no
enqueue time: it is counted as processed but left out of the queue-wait average.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import contract_tasks  # noqa: F401 - registers the contract.* tasks
import pytest
from conftest import async_wait_until, opened, run, running

from uno_jobs import JobFailedError
from uno_jobs.broker import Broker, Outgoing
from uno_jobs.message import Encoded
from uno_jobs.metrics import WorkerStats
from uno_jobs.worker._registry import get_worker_type

pytestmark = pytest.mark.integration


def celery_message(task: str, args: list[object]) -> Encoded:
    """A message as a Celery producer sends it: no ``uno_*`` headers, no enqueue time."""
    job_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": task,
        "id": job_id,
        "root_id": job_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": repr(tuple(args)),
        "kwargsrepr": "{}",
        "origin": "gen1@celery-host",
    }
    body = json.dumps([args, {}, {"callbacks": None}]).encode()
    return Encoded(body, headers, {"correlation_id": job_id}, "application/json", "utf-8")


@pytest.mark.parametrize("kind", ["sync", "thread", "async", "process"])
def test_health_and_metrics_on_every_worker_type(
    kind: str, uno_home: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    original = WorkerStats.job_started

    def spy(self: WorkerStats, enqueued_at: float | None, now: float) -> None:
        waits.append(-1.0 if enqueued_at is None else now - enqueued_at)
        original(self, enqueued_at, now)

    monkeypatch.setattr(WorkerStats, "job_started", spy)

    async def main() -> None:
        async with opened(queue_name, "embedded://") as queue:
            worker = get_worker_type(kind)(queue_name=queue.name, broker_url="embedded://")
            async with running(worker):
                jobs = [await queue.enqueue("contract.sleep", [0.05]) for _ in range(3)]
                failing = await queue.enqueue("contract.fail", ["on purpose"])
                for job in jobs:
                    assert await job.wait(timeout=30) == 0.05
                with pytest.raises(JobFailedError):
                    await failing.wait(timeout=30)
                Broker("embedded://").publish(
                    [Outgoing(queue.name, celery_message("contract.add", [1, 2]))]
                )
                await async_wait_until(lambda: worker.stats.processed == 5, timeout=30)

                health = await worker.get_health()
                metrics = await worker.get_metrics()

        assert health["status"] == "healthy"
        assert isinstance(health["uptime"], int) and health["uptime"] >= 0
        assert health["jobs_processed"] == 5 and health["current_jobs"] == 0
        assert health["failure_rate"] == 0.2
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", health["last_job_completed"])
        assert (metrics["jobs_processed_total"], metrics["jobs_succeeded"]) == (5, 4)
        assert metrics["jobs_failed"] == 1 and metrics["error_rate"] == 0.2
        assert metrics["processing_time_p95_ms"] >= 50.0  # the 50 ms sleeps
        assert metrics["processing_time_p99_ms"] >= metrics["processing_time_p95_ms"]
        assert metrics["throughput_jobs_per_minute"] == 5
        assert metrics["active_jobs"] == 0
        # Four jobs carried uno_jobs' enqueue time, the Celery one did not: it is left out.
        assert sorted(w < 0 for w in waits) == [False] * 4 + [True]
        measured = [w for w in waits if w >= 0]
        expected = sum(measured) / len(measured) * 1000
        assert metrics["queue_wait_time_avg_ms"] == pytest.approx(expected, abs=0.01)

    run(main)
