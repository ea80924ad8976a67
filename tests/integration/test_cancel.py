"""Cancellation and expiry on every broker: a cancelled or expired job never runs.

Parametrised over the embedded broker, Redis and RabbitMQ (``broker_url``). Tasks that
run write a marker file into ``tmp_path`` (``contract.mark``), so "never ran" is checked
on the file system, not only on the record.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import contract_tasks  # registers the contract.* tasks; hold_until is used below
import pytest
from conftest import async_wait_until, make_broker_url, opened, run, running

from uno_jobs import JobFailedError, JobStatus, Queue, task
from uno_jobs.broker import Broker, Outgoing
from uno_jobs.errors import JobNotFoundError, JobStateError
from uno_jobs.message import Encoded
from uno_jobs.worker import AsyncWorker, SyncWorker

pytestmark = pytest.mark.integration


@task(name="cancel_tests.hold_then_fail", max_retries=2, retry_delay=0)
def hold_then_fail(folder: str, name: str, release: str) -> None:
    """Mark, hold until ``release`` exists, then fail (so it would be retried at once)."""
    contract_tasks.hold_until(folder, name, release)
    raise ValueError("failed after the cancellation")


def worker_for(queue: Queue, **options: Any) -> AsyncWorker:
    return AsyncWorker(
        queue_name=queue.name, broker_url=queue.broker_url, poll_interval=0.1, **options
    )


def marks(folder: Path, name: str) -> list[Path]:
    return list(folder.glob(f"{name}.*"))


async def assert_dead(queue: Queue, job_id: str, reason: str) -> None:
    with pytest.raises(JobFailedError) as info:
        await queue.job(job_id).wait(timeout=15)
    assert (info.value.status, info.value.dead_reason) == ("dead", reason)


def test_a_job_cancelled_before_the_worker_starts_never_runs(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            kept = await queue.enqueue("contract.mark", [str(tmp_path), "kept"])
            cancelled = await queue.enqueue("contract.mark", [str(tmp_path), "cancelled"])
            assert await queue.cancel(cancelled.id) == JobStatus.QUEUED
            async with running(worker_for(queue)):
                assert await kept.wait(timeout=15) == "kept"
                await assert_dead(queue, cancelled.id, "cancelled")
            assert marks(tmp_path, "cancelled") == []
            record = await queue.get_job(cancelled.id)
            assert (record.status, record.attempts) == (JobStatus.DEAD, 0)
            [entry] = await queue.dead_letters()
            assert (entry.job_id, entry.reason) == (cancelled.id, "cancelled")
            sizes = await queue.sizes()
            assert sizes[f"{queue_name}.dead"] == 1

    run(main)


def test_jobs_cancelled_while_two_workers_are_paused_never_run(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    """Cancellations reach every worker, and one refresh serves a batch of deliveries."""

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            first = worker_for(queue, max_concurrent=4)
            second = SyncWorker(queue_name=queue.name, broker_url=queue.broker_url)
            async with running(first), running(second):
                await first.pause()
                await second.pause()
                jobs = [
                    await queue.enqueue("contract.mark", [str(tmp_path), f"j{i}"])
                    for i in range(20)
                ]
                cancelled = {job.id for job in jobs[::2]}
                for job_id in cancelled:
                    assert await queue.cancel(job_id) == JobStatus.QUEUED
                await first.resume()
                await second.resume()
                for i, job in enumerate(jobs):
                    if job.id in cancelled:
                        await assert_dead(queue, job.id, "cancelled")
                    else:
                        assert await job.wait(timeout=15) == f"j{i}"
            assert [i for i in range(0, 20, 2) if marks(tmp_path, f"j{i}")] == []
            dead = {entry.job_id for entry in await queue.dead_letters()}
            assert dead == cancelled

    run(main)


def test_a_worker_that_ran_jobs_sees_a_later_cancellation(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    """The worker's copy of the cancelled ids is refreshed once they change."""

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            worker = worker_for(queue)
            async with running(worker):
                for i in range(3):
                    warm_up = await queue.enqueue("contract.add", [i, 1])
                    assert await warm_up.wait(timeout=15) == i + 1
                await worker.pause()
                job = await queue.enqueue("contract.mark", [str(tmp_path), "late"])
                assert await queue.cancel(job.id) == JobStatus.QUEUED
                after = await queue.enqueue("contract.mark", [str(tmp_path), "after"])
                await worker.resume()
                assert await after.wait(timeout=15) == "after"
                await assert_dead(queue, job.id, "cancelled")
            assert marks(tmp_path, "late") == []

    run(main)


def test_cancelling_a_delayed_job_takes_it_out_of_the_schedule(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    # An hour: past SQS's 15 minutes, so in the store's schedule on every broker (a shorter
    # delay on SQS is held by SQS: test_sqs.test_a_cancelled_job_held_by_sqs_never_runs).
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            job = await queue.enqueue("contract.mark", [str(tmp_path), "later"], delay=3600)
            assert queue.store.scheduled_count() == 1
            assert await queue.cancel(job.id) == JobStatus.DEAD
            record = await queue.get_job(job.id)
            assert (record.status, record.dead_reason) == (JobStatus.DEAD, "cancelled")
            assert queue.store.scheduled_count() == 0
            [entry] = await queue.dead_letters()
            assert (entry.job_id, entry.reason, entry.task) == (
                job.id,
                "cancelled",
                "contract.mark",
            )
            assert (await queue.sizes())[f"{queue_name}.dead"] == 1
            with pytest.raises(JobStateError, match="it is dead"):
                await queue.cancel(job.id)

    run(main)


def test_cancelling_a_job_waiting_for_its_retry(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(worker_for(queue)):
                job = await queue.enqueue("contract.flaky_hourly", [str(tmp_path), "r", 1])
                # The worker writes the status, then the schedule entry: between the two a
                # cancel answers "scheduled" (and the job is dead-lettered when it is due).
                await async_wait_until(
                    lambda: (
                        queue.get_job_sync(job.id).status == JobStatus.SCHEDULED
                        and queue.store.scheduled_count() == 1
                    ),
                    timeout=15,
                )
                assert await queue.cancel(job.id) == JobStatus.DEAD
                await assert_dead(queue, job.id, "cancelled")
            assert len(marks(tmp_path, "r")) == 1, "the first attempt ran, no retry did"
            assert queue.store.scheduled_count() == 0
            assert (await queue.sizes())[f"{queue_name}.dead"] == 1

    run(main)


def _recorded_running(queue: Queue, job_id: str) -> bool:
    record = queue.store.get(job_id)
    return record is not None and record.status == JobStatus.RUNNING


def test_a_running_job_is_not_interrupted(broker_url: str, queue_name: str, tmp_path: Path) -> None:
    release = tmp_path / "release"

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(worker_for(queue)):
                job = await queue.enqueue(
                    "contract.hold_until", [str(tmp_path), "held", str(release)]
                )
                await async_wait_until(lambda: marks(tmp_path, "held"), timeout=15)
                # The worker records "running" through its recorder, a moment after the
                # task started: cancel reads the record.
                await async_wait_until(lambda: _recorded_running(queue, job.id), timeout=15)
                assert await queue.cancel(job.id) == JobStatus.RUNNING
                release.write_text("go")
                assert await job.wait(timeout=15) == "held"

    run(main)


def test_a_cancelled_running_job_that_fails_is_not_retried(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    release = tmp_path / "release"

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(worker_for(queue)):
                job = await queue.enqueue(
                    "cancel_tests.hold_then_fail", [str(tmp_path), "f", str(release)]
                )
                await async_wait_until(lambda: marks(tmp_path, "f"), timeout=15)
                # The worker records "running" through its recorder, a moment after the
                # task started: cancel reads the record.
                await async_wait_until(lambda: _recorded_running(queue, job.id), timeout=15)
                assert await queue.cancel(job.id) == JobStatus.RUNNING
                release.write_text("go")
                await assert_dead(queue, job.id, "cancelled")
            assert len(marks(tmp_path, "f")) == 1, "max_retries=2, but no retry ran"
            record = await queue.get_job(job.id)
            assert record.attempts == 1

    run(main)


def test_cancel_of_an_unknown_or_finished_job_is_refused(broker_url: str, queue_name: str) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            with pytest.raises(JobNotFoundError, match="no-such-job"):
                await queue.cancel("no-such-job")
            async with running(worker_for(queue)):
                done = await queue.enqueue("contract.add", [1, 2])
                assert await done.wait(timeout=15) == 3
            with pytest.raises(JobStateError) as info:
                queue.cancel_sync(done.id)
            assert (info.value.job_id, info.value.status) == (done.id, "succeeded")
            assert str(info.value) == f"cannot cancel job {done.id!r}: it is succeeded"

    run(main)


def test_a_job_delivered_after_it_expired_is_dead(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            soon = await queue.enqueue("contract.mark", [str(tmp_path), "soon"], expires=0.3)
            later = await queue.enqueue(
                "contract.mark",
                [str(tmp_path), "later"],
                expires=datetime.now(timezone.utc) + timedelta(hours=1),
            )
            expiry = time.time() + 0.3
            await async_wait_until(lambda: time.time() > expiry, timeout=5)
            async with running(worker_for(queue)):
                assert await later.wait(timeout=15) == "later"
                await assert_dead(queue, soon.id, "expired")
            assert marks(tmp_path, "soon") == []
            [entry] = await queue.dead_letters()
            assert (entry.job_id, entry.reason) == (soon.id, "expired")

    run(main)


def test_a_celery_message_with_an_expires_header_in_the_past_is_dead(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    """Celery's own ``expires`` header, sent by a Celery producer, is honoured."""
    job_id = str(uuid.uuid4())
    past = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    headers = {
        "lang": "py",
        "task": "contract.mark",
        "id": job_id,
        "root_id": job_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": past,
        "timelimit": [None, None],
        "argsrepr": "(...)",
        "kwargsrepr": "{}",
        "origin": "gen1@celery-host",
    }
    body = json.dumps([[str(tmp_path), "celery"], {}, {"callbacks": None}]).encode()

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            broker = Broker(broker_url)
            message = Encoded(
                body, headers, {"correlation_id": job_id}, "application/json", "utf-8"
            )
            broker.publish([Outgoing(queue_name, message)])
            broker.close()
            async with running(worker_for(queue)):
                await async_wait_until(lambda: queue.store.get(job_id) is not None, timeout=15)
                await assert_dead(queue, job_id, "expired")
            assert marks(tmp_path, "celery") == []
            record = await queue.get_job(job_id)
            assert record.error_message == f"expired at {past}"

    run(main)


def test_an_expired_cancellation_no_longer_stops_a_job(queue_name: str, tmp_path: Path) -> None:
    """Cancellations last as long as the store's retention (memory store, short retention)."""
    store_url = f"memory://cancel-retention-{uuid.uuid4().hex}"

    async def main() -> None:
        queue = Queue(queue_name, broker_url="memory://", store_url=store_url)
        job = await queue.enqueue("contract.mark", [str(tmp_path), "m"])
        queue.store.cancel(job.id, time.time() - queue.store.retention_seconds - 1)
        worker = SyncWorker(queue_name=queue_name, broker_url="memory://", store_url=store_url)
        async with running(worker):
            assert await job.wait(timeout=15) == "m"
        queue.close()

    run(main)


def test_a_redis_worker_reads_no_cancellations_while_none_change(
    queue_name: str, tmp_path: Path
) -> None:
    """Redis broker and store on one database: each fetch reads the cancellations' version
    with its messages, so a delivery starts without a store read while it is the version
    the worker holds; a cancellation moves it on, and the next delivery reads again."""
    url, cleanup = make_broker_url("redis")
    reads: list[str] = []

    def spy(store: Any, name: str) -> None:
        original = getattr(store, name)

        def counted(known_version: int | None) -> Any:
            reads.append(name)
            return original(known_version)

        setattr(store, name, counted)

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            worker = worker_for(queue)
            async with running(worker):
                warm_up = await queue.enqueue("contract.add", [0, 1])
                assert await warm_up.wait(timeout=15) == 1
                spy(worker._store, "cancellations")
                spy(worker._store, "cancellations_quick")
                for i in range(5):
                    job = await queue.enqueue("contract.add", [i, 1])
                    assert await job.wait(timeout=15) == i + 1
                assert reads == []
                await worker.pause()
                late = await queue.enqueue("contract.mark", [str(tmp_path), "late"])
                assert await queue.cancel(late.id) == JobStatus.QUEUED
                await worker.resume()
                await assert_dead(queue, late.id, "cancelled")
                assert reads, "a version that moved on is read"
            assert marks(tmp_path, "late") == []

    try:
        run(main)
    finally:
        cleanup()
