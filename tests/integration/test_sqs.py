"""What only SQS needs: message size after kombu's double encoding, URL options, delays
held by SQS itself (``DelaySeconds``, up to 15 minutes).

The behaviours shared by every broker run on SQS through the ``broker_url`` fixture
(moto's SQS server, ``conftest.sqs_endpoint``); these are the SQS-only ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import contract_tasks
import kombu
import pytest
from conftest import (
    async_wait_until,
    make_broker_url,
    opened,
    run,
    running,
    sqs_delayed,
    sqs_endpoint,
)

from uno_jobs import JobFailedError, JobStatus, Queue, task
from uno_jobs.broker import Broker, Outgoing, level_queue_name
from uno_jobs.errors import JobNotFoundError, PayloadError
from uno_jobs.message import Encoded, encode, iso_from_timestamp, new_message
from uno_jobs.schedule import BROKER_DELAY_HEADER
from uno_jobs.worker import AsyncWorker

pytestmark = pytest.mark.integration


@task(name="sqs_tests.fail_once", max_retries=1, retry_delay=3)
def fail_once(folder: str, name: str) -> int:
    """Fails its first attempt (retried 3 s later), then succeeds."""
    return contract_tasks._flaky(folder, name, 1)


@pytest.fixture
def sqs_url(uno_home: Path) -> Iterator[str]:
    url, cleanup = make_broker_url("sqs")
    try:
        yield url
    finally:
        cleanup()


def sqs_worker(queue: Queue) -> AsyncWorker:
    return AsyncWorker(queue_name=queue.name, broker_url=queue.broker_url, poll_interval=0.1)


def marks(folder: Path, name: str) -> list[float]:
    """Start times of the runs of ``name`` (``contract.mark`` and ``_flaky`` files)."""
    return sorted(float(p.read_text()) for p in folder.glob(f"{name}.*"))


def test_message_too_large_once_encoded_for_sqs_is_refused_and_not_recorded(
    uno_home: Path, queue_name: str
) -> None:
    url, cleanup = make_broker_url("sqs")
    # A queue made beforehand with the classic 256 KiB limit (SQS's default is now 1 MiB).
    boto3 = pytest.importorskip("boto3")
    client = boto3.client(
        "sqs",
        endpoint_url=f"http://{sqs_endpoint()}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_queue(QueueName=queue_name, Attributes={"MaximumMessageSize": "262144"})

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            # 180 KB of arguments: under uno_jobs' 256 KiB body limit, but kombu's two
            # base64 layers make it about 320 KB, over the queue's 256 KiB.
            with pytest.raises(PayloadError, match=r"once encoded for SQS.*262144") as info:
                await queue.enqueue("contract.add", ["x" * 180_000, ""], job_id=f"{queue_name}-big")
            assert f"{queue_name}-big" in str(info.value)
            with pytest.raises(JobNotFoundError):
                await queue.get_job(f"{queue_name}-big")
            # 100 KB (about 180 KB on the wire) goes through and runs.
            async with running(AsyncWorker(queue_name=queue_name, broker_url=url)):
                job = await queue.enqueue("contract.add", ["y" * 100_000, "z"])
                assert await job.wait(timeout=20) == "y" * 100_000 + "z"

    try:
        run(main)
    finally:
        cleanup()


def test_a_delay_of_up_to_15_minutes_is_held_by_sqs_and_runs_once_when_due(
    sqs_url: str, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, sqs_url) as queue:
            job = await queue.enqueue("contract.mark", [str(tmp_path), "d"], delay=2)
            enqueued = time.time()
            assert (await queue.get_job(job.id)).status == JobStatus.SCHEDULED
            assert queue.store.scheduled_count() == 0, "not in the store's schedule"
            assert sqs_delayed(queue_name) == 1, "SQS holds it (DelaySeconds)"
            assert await queue.size() == 0
            async with running(sqs_worker(queue)):
                assert await job.wait(timeout=20) == "d"
                # Nothing else comes: no second delivery, nothing scheduled.
                assert queue.store.scheduled_count() == 0 and sqs_delayed(queue_name) == 0
            [started] = marks(tmp_path, "d")
            assert started - enqueued >= 2.0 - 0.05, "it ran before its delay"
            record = await queue.get_job(job.id)
            assert (record.status, record.attempts) == (JobStatus.SUCCEEDED, 1)
            assert record.started_at is not None and record.enqueued_at is not None
            assert record.started_at - record.enqueued_at >= 2.0

    run(main)


def test_a_delay_over_15_minutes_waits_in_the_store_schedule(
    sqs_url: str, queue_name: str, tmp_path: Path
) -> None:
    """900 s is SQS's limit; 900.5 s rounds up to 901 and waits in the store instead."""

    async def main() -> None:
        async with opened(queue_name, sqs_url) as queue:
            at_limit = await queue.enqueue("contract.mark", [str(tmp_path), "a"], delay=900)
            over = await queue.enqueue("contract.mark", [str(tmp_path), "o"], delay=900.5)
            now = time.time()
            assert sqs_delayed(queue_name) == 1
            assert queue.store.scheduled_count() == 1
            for job in (at_limit, over):
                assert (await queue.get_job(job.id)).status == JobStatus.SCHEDULED
            assert queue.store.unschedule(at_limit.id, now) is None
            entry = queue.store.unschedule(over.id, now)
            assert entry is not None
            assert entry.routing_key == level_queue_name(queue_name, "normal")
            assert now + 899 < entry.due_at <= now + 900.5

    run(main)


def test_a_delayed_retry_is_held_by_sqs(sqs_url: str, queue_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(queue_name, sqs_url) as queue:
            async with running(sqs_worker(queue)):
                job = await queue.enqueue("sqs_tests.fail_once", [str(tmp_path), "r"])
                await async_wait_until(
                    lambda: queue.get_job_sync(job.id).status == JobStatus.SCHEDULED, timeout=15
                )
                # Recorded first, then published with DelaySeconds, then the ack.
                await async_wait_until(lambda: sqs_delayed(queue_name) == 1, timeout=2.5)
                assert queue.store.scheduled_count() == 0, "not in the store's schedule"
                assert await job.wait(timeout=20) == 2
            first, second = marks(tmp_path, "r")
            assert second - first >= 3.0, "the retry ran before its delay"
            record = await queue.get_job(job.id)
            assert (record.status, record.attempts) == (JobStatus.SUCCEEDED, 2)
            assert [e.attempt for e in record.errors] == [1]

    run(main)


def test_a_cancelled_job_held_by_sqs_never_runs(
    sqs_url: str, queue_name: str, tmp_path: Path
) -> None:
    """It cannot be taken out of SQS: it stays ``scheduled`` until SQS delivers it, and the
    worker that receives it dead-letters it ``cancelled`` instead of running it."""

    async def main() -> None:
        async with opened(queue_name, sqs_url) as queue:
            kept = await queue.enqueue("contract.mark", [str(tmp_path), "kept"], delay=1)
            cancelled = await queue.enqueue("contract.mark", [str(tmp_path), "c"], delay=1)
            assert await queue.cancel(cancelled.id) == JobStatus.SCHEDULED
            assert (await queue.get_job(cancelled.id)).status == JobStatus.SCHEDULED
            async with running(sqs_worker(queue)):
                assert await kept.wait(timeout=20) == "kept"
                with pytest.raises(JobFailedError) as info:
                    await cancelled.wait(timeout=20)
                assert (info.value.status, info.value.dead_reason) == ("dead", "cancelled")
            assert marks(tmp_path, "c") == []
            record = await queue.get_job(cancelled.id)
            assert (record.status, record.attempts) == (JobStatus.DEAD, 0)
            [entry] = await queue.dead_letters()
            assert (entry.job_id, entry.reason) == (cancelled.id, "cancelled")

    run(main)


@pytest.mark.parametrize("marked", [True, False])
def test_a_message_sqs_held_runs_though_its_eta_is_a_little_ahead_of_this_clock(
    marked: bool, sqs_url: str, queue_name: str, tmp_path: Path
) -> None:
    """A host clock behind the producer's: the ``eta`` of a message SQS held back is still
    0.9 s ahead when it arrives. It runs (within the tolerance) instead of being deferred;
    an unmarked message with the same ``eta`` (a Celery countdown) waits for it exactly."""

    async def main() -> None:
        async with opened(queue_name, sqs_url) as queue:
            broker = Broker(sqs_url)
            try:
                async with running(sqs_worker(queue)):
                    message = new_message(
                        "contract.mark", [str(tmp_path), "e"], {}, queue=queue_name
                    )
                    eta = time.time() + 0.9
                    message.eta = iso_from_timestamp(eta)
                    if marked:
                        message.extra_headers[BROKER_DELAY_HEADER] = 1
                    outgoing = Outgoing(level_queue_name(queue_name, "normal"), encode(message))
                    broker.publish([outgoing])
                    await async_wait_until(lambda: marks(tmp_path, "e"), timeout=20)
            finally:
                broker.close()
            [started] = marks(tmp_path, "e")
            if marked:
                assert started < eta, "run at once, not sent round to wait 0.9 s"
            else:
                assert started >= eta, "an unmarked eta is waited for exactly"
                assert queue.store.scheduled_count() == 0, "deferred in SQS, not the store"

    run(main)


def test_a_dead_letter_sqs_hands_out_again_during_a_requeue_pass_is_requeued_once(
    uno_home: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that outlasts the visibility timeout sees its first message again: that
    message, which stays on ``q.dead``, is kept once, not twice."""
    url, cleanup = make_broker_url("sqs", visibility_timeout=1)
    ids = [f"{queue_name}-{i}" for i in range(3)]
    receives: list[float] = []
    kombu_get = kombu.Queue.get

    def slow_get(self: kombu.Queue, *args: Any, **kwargs: Any) -> Any:
        message = kombu_get(self, *args, **kwargs)
        receives.append(time.monotonic())
        if len(receives) == 1:
            time.sleep(1.5)  # the first message's visibility timeout runs out
        return message

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            broker = Broker(url)
            try:
                broker.publish(
                    [
                        Outgoing(
                            f"{queue_name}.dead",
                            Encoded(
                                b"[[], {}, {}]",
                                {"id": i, "task": "t"},
                                {"correlation_id": i},
                                "application/json",
                                "utf-8",
                            ),
                        )
                        for i in ids
                    ]
                )
            finally:
                broker.close()
            with monkeypatch.context() as patched:
                patched.setattr(kombu.Queue, "get", slow_get)
                # The first message, which stays, comes twice: it is kept once.
                assert await queue.requeue_dead([ids[2]]) == [ids[2]]
            assert len(receives) == 4
            sizes = await queue.sizes()
            assert sizes[f"{queue_name}.dead"] == 2
            assert sizes[level_queue_name(queue_name, "normal")] == 1
            assert await queue.requeue_dead() == ids[:2]

    try:
        run(main)
    finally:
        cleanup()
