"""Testing tasks with uno_jobs' pytest plugin: no broker, no server.

Run with ``pytest examples/testing`` (the plugin loads itself once uno_jobs is installed).
"""

import asyncio

import pytest
import shop_tasks

from uno_jobs import JobFailedError, JobStatus


def test_total_runs_as_a_job(uno_queue, uno_worker):
    job = uno_queue.enqueue_sync("shop.total", args=[[10.0, 20.0]], kwargs={"discount": 0.1})
    uno_worker.run_until_idle_sync()
    assert uno_queue.get_job_sync(job.id).result == 27.0


def test_a_flaky_task_is_retried(uno_queue, uno_worker):
    shop_tasks.charge.calls = 0

    async def scenario():
        job = await uno_queue.enqueue("shop.charge", args=["o-1", 2])
        await uno_worker.run_until_idle()
        record = await uno_queue.get_job(job.id)
        assert record.status == JobStatus.SUCCEEDED
        assert record.attempts == 3
        assert record.result == "charged o-1"

    asyncio.run(scenario())


def test_a_task_that_keeps_failing_ends_failed(uno_queue, uno_worker):
    shop_tasks.charge.calls = 0
    job = uno_queue.enqueue_sync("shop.charge", args=["o-2", 10])
    uno_worker.run_until_idle_sync()
    with pytest.raises(JobFailedError, match="payment gateway down"):
        job.wait_sync(timeout=1)
