"""Dead letters on every broker: their reasons, requeue (one, some, all) and purge.

Parametrised over the embedded broker, Redis and RabbitMQ (``broker_url``). A worker with
an empty task registry stands for a deploy that lacked a task: its jobs are dead-lettered
``unknown_task``, and after a requeue a worker that knows the task runs them.
"""

from __future__ import annotations

import time
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import contract_tasks  # noqa: F401 - registers the contract.* tasks
import pytest
from conftest import async_wait_until, opened, run
from conftest import running as shared_running

from uno_jobs import JobFailedError, JobStatus, Queue, TaskRegistry, task
from uno_jobs.broker import Broker, Outgoing
from uno_jobs.broker._publisher import PublishSession
from uno_jobs.errors import BrokerUnavailableError
from uno_jobs.message import Encoded
from uno_jobs.store import DeadLetter
from uno_jobs.worker import AsyncWorker, BaseWorker

pytestmark = pytest.mark.integration

DAY = 24 * 3600.0

# What a worker of another deploy knows: none of the contract tasks. (Not left empty: a
# worker given an empty registry falls back to the default one.)
OTHER_TASKS = TaskRegistry()


@task(name="dead_letters.unrelated", registry=OTHER_TASKS)
def unrelated() -> None:
    """Never run: it only makes ``OTHER_TASKS`` non-empty."""


def running(worker: BaseWorker) -> AbstractAsyncContextManager[BaseWorker]:
    return shared_running(worker, graceful=True)


def worker_for(queue: Queue, *, knows_tasks: bool = True, **options: Any) -> AsyncWorker:
    if not knows_tasks:
        options["registry"] = OTHER_TASKS
    return AsyncWorker(queue_name=queue.name, broker_url=queue.broker_url, **options)


async def dead_letter_all(queue: Queue, job_ids: list[str]) -> None:
    """Run a worker that knows no task until every job is dead, then stop it.

    After a graceful shutdown every dead letter is published to ``q.dead`` and acked.
    """
    async with running(worker_for(queue, knows_tasks=False)):
        for job_id in job_ids:
            with pytest.raises(JobFailedError):
                await queue.job(job_id).wait(timeout=15)


def publish_raw(broker_url: str, routing_key: str, *messages: Encoded) -> None:
    broker = Broker(broker_url)
    try:
        broker.publish([Outgoing(routing_key, message) for message in messages])
    finally:
        broker.close()


def raw(body: bytes, headers: dict[str, Any], content_type: str = "application/json") -> Encoded:
    job_id = headers.get("id")
    properties = {"correlation_id": job_id} if job_id else {}
    return Encoded(body, headers, properties, content_type, "utf-8")


def test_dead_letters_list_each_reason(broker_url: str, queue_name: str) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            cancelled = await queue.enqueue("contract.add", [1, 1])
            await queue.cancel(cancelled.id)
            expired = await queue.enqueue("contract.add", [1, 1], expires=0.2)
            ids = {"pickle": str(uuid.uuid4()), "garbage": str(uuid.uuid4())}
            publish_raw(
                broker_url,
                queue_name,
                raw(
                    b"\x80\x04K\x01.",
                    {"id": ids["pickle"], "task": "contract.add"},
                    "application/x-python-serialize",
                ),
                raw(b"{not json", {"id": ids["garbage"], "task": "contract.add"}),
                raw(b"[[1, 2], {}, {}]", {"task": "contract.add"}),  # no id at all
            )
            expiry = time.time() + 0.2
            await async_wait_until(lambda: time.time() > expiry, timeout=5)
            async with running(worker_for(queue, allowed_modules=["contract_tasks"])):
                unknown = await queue.enqueue("no_such_task")
                forbidden = await queue.enqueue("os.system", ["echo pwned"])
                failed = await queue.enqueue("contract.fail", ["it broke"])
                for job in (unknown, forbidden, failed, cancelled, expired):
                    with pytest.raises(JobFailedError):
                        await job.wait(timeout=15)
                await async_wait_until(lambda: len(queue.dead_letters_sync()) == 8, timeout=15)
            reasons = {entry.job_id: entry.reason for entry in await queue.dead_letters()}
            broken = [job_id for job_id in reasons if job_id.startswith("dead-")]
            assert len(broken) == 1, "a message with no id is listed under a generated one"
            assert reasons == {
                unknown.id: "unknown_task",
                forbidden.id: "forbidden_task",
                failed.id: "max_retries_exceeded",
                cancelled.id: "cancelled",
                expired.id: "expired",
                ids["pickle"]: "content_type_disallowed",
                ids["garbage"]: "decode_error",
                broken[0]: "invalid_message",
            }
            record = await queue.get_job(broken[0])
            assert (record.status, record.dead_reason) == (JobStatus.DEAD, "invalid_message")
            assert (await queue.sizes())[f"{queue_name}.dead"] == 8
            everywhere = await queue.dead_letters(every_queue=True)
            assert {entry.job_id for entry in everywhere} == set(reasons)

    run(main)


def test_requeue_one_id_leaves_the_others_in_order(broker_url: str, queue_name: str) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            ids = [f"{queue_name}-{i}" for i in range(5)]
            for i, job_id in enumerate(ids):
                await queue.enqueue("contract.add", [i, 100], job_id=job_id)
            await dead_letter_all(queue, ids)
            assert (await queue.sizes())[f"{queue_name}.dead"] == 5

            assert await queue.requeue_dead([ids[2], "not-dead"]) == [ids[2]]
            sizes = await queue.sizes()
            assert (sizes[queue_name], sizes[f"{queue_name}.dead"]) == (1, 4)
            assert ids[2] not in {entry.job_id for entry in await queue.dead_letters()}
            record = await queue.get_job(ids[2])
            assert (record.status, record.attempts, record.dead_reason) == (
                JobStatus.QUEUED,
                0,
                None,
            )
            # Requeueing the rest returns them in their order on q.dead.
            assert await queue.requeue_dead() == [ids[0], ids[1], ids[3], ids[4]]
            assert await queue.dead_letters() == []
            async with running(worker_for(queue)):
                results = [await queue.job(job_id).wait(timeout=15) for job_id in ids]
            assert results == [100, 101, 102, 103, 104]
            for job_id in ids:
                record = await queue.get_job(job_id)
                assert (record.status, record.attempts) == (JobStatus.SUCCEEDED, 1)
            assert (await queue.sizes())[f"{queue_name}.dead"] == 0

    run(main)


def test_requeue_resets_the_message_and_keeps_its_priority(
    broker_url: str, queue_name: str
) -> None:
    """A dead letter that was retried, lost its worker, had an eta and expired."""
    job_id = f"{queue_name}-tired"
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    headers = {
        "lang": "py",
        "task": "contract.add",
        "id": job_id,
        "retries": 3,
        "eta": past,
        "expires": past,
        "uno_worker_lost": 2,
        "uno_priority": "high",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "uno_dead_reason": "worker_lost",
        "uno_dead_error": "killed",
        "uno_dead_at": time.time(),
    }

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            publish_raw(broker_url, f"{queue_name}.dead", raw(b"[[2, 3], {}, {}]", headers))
            queue.store.add_dead_letter(
                DeadLetter(job_id, "contract.add", queue_name, "worker_lost", "killed", time.time())
            )
            assert await queue.requeue_dead([job_id]) == [job_id]
            sizes = await queue.sizes()
            assert (sizes[f"{queue_name}.high"], sizes[f"{queue_name}.dead"]) == (1, 0)
            broker = Broker(broker_url)
            with broker.sweep(f"{queue_name}.high") as sweep:
                [message] = sweep.take(10)
                sweep.settle([Outgoing(f"{queue_name}.high", message.encoded())])
            broker.close()
            sent = message.headers
            assert (sent["retries"], sent["uno_worker_lost"], sent["eta"]) == (0, 0, None)
            assert sent["expires"] is None
            assert not [name for name in sent if name.startswith("uno_dead_")]
            assert (sent["id"], sent["traceparent"]) == (job_id, headers["traceparent"])
            async with running(worker_for(queue)):
                assert await queue.job(job_id).wait(timeout=15) == 5
            record = await queue.get_job(job_id)
            assert (record.attempts, record.worker_lost) == (1, 0)

    run(main)


def test_a_requeued_message_that_had_no_id_runs_under_its_generated_id(
    broker_url: str, queue_name: str
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            publish_raw(
                broker_url, queue_name, raw(b"[[20, 22], {}, {}]", {"task": "contract.add"})
            )
            async with running(worker_for(queue)):
                await async_wait_until(lambda: queue.dead_letters_sync(), timeout=15)
            [entry] = await queue.dead_letters()
            assert entry.job_id.startswith("dead-") and entry.reason == "invalid_message"
            assert await queue.requeue_dead([entry.job_id]) == [entry.job_id]
            async with running(worker_for(queue)):
                assert await queue.job(entry.job_id).wait(timeout=15) == 42

    run(main)


def test_a_requeued_cancelled_job_runs(broker_url: str, queue_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            # An hour: in the store's schedule on every broker (SQS holds up to 15 minutes).
            job = await queue.enqueue("contract.mark", [str(tmp_path), "again"], delay=3600)
            assert await queue.cancel(job.id) == JobStatus.DEAD
            assert await queue.requeue_dead() == [job.id]
            async with running(worker_for(queue)):
                assert await job.wait(timeout=15) == "again"

    run(main)


def test_purge_empties_q_dead_and_the_index(broker_url: str, queue_name: str) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            ids = [f"{queue_name}-{i}" for i in range(3)]
            for job_id in ids:
                await queue.enqueue("contract.add", [1, 2], job_id=job_id)
            await dead_letter_all(queue, ids)
            other = Queue(f"{queue_name}-other", broker_url=broker_url)
            other.store.add_dead_letter(
                DeadLetter("x", "t", other.name, "timeout", None, time.time())
            )
            try:
                assert await queue.purge_dead() == 3
                assert (await queue.sizes())[f"{queue_name}.dead"] == 0
                assert await queue.dead_letters() == []
                assert [e.job_id for e in await other.dead_letters()] == ["x"]
            finally:
                await other.delete()
                other.close()

    run(main)


def test_purge_expired_drops_only_what_is_past_retention(broker_url: str, queue_name: str) -> None:
    now = time.time()
    ages = {"old": 8 * DAY, "recent": 1 * DAY}

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            for name, age in ages.items():
                job_id = f"{queue_name}-{name}"
                headers = {"id": job_id, "task": "t", "uno_dead_reason": "timeout"}
                headers["uno_dead_at"] = now - age
                publish_raw(broker_url, f"{queue_name}.dead", raw(b"[[], {}, {}]", headers))
                queue.store.add_dead_letter(
                    DeadLetter(job_id, "t", queue_name, "timeout", None, now - age)
                )
            assert await queue.purge_dead(expired=True) == 1
            assert [e.job_id for e in await queue.dead_letters()] == [f"{queue_name}-recent"]
            assert (await queue.sizes())[f"{queue_name}.dead"] == 1
            assert await queue.requeue_dead() == [f"{queue_name}-recent"]

    run(main)


def test_requeue_one_of_many_takes_one_pass_in_batches(broker_url: str, queue_name: str) -> None:
    """More dead letters than one batch of the pass: the order still holds."""
    ids = [f"{queue_name}-{i:03d}" for i in range(150)]
    # A pass holds what it took until it settles; against moto's server (some tens of
    # requests a second here) a pass of 150 outlasts the fixture's 3 s visibility timeout,
    # and SQS would hand the held messages out again.
    broker_url = broker_url.replace("visibility_timeout=3&", "visibility_timeout=120&")

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            messages = [
                raw(b"[[], {}, {}]", {"id": job_id, "task": "t", "uno_dead_at": time.time()})
                for job_id in ids
            ]
            publish_raw(broker_url, f"{queue_name}.dead", *messages)
            assert await queue.requeue_dead([ids[137]]) == [ids[137]]
            assert (await queue.sizes())[f"{queue_name}.dead"] == 149
            assert await queue.requeue_dead() == ids[:137] + ids[138:]

    run(main)


def test_a_failed_requeue_leaves_everything_as_it_was(
    uno_home: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish of a pass fails: nothing is acked, and the records are dead again."""

    def refuse(session: PublishSession, items: Any) -> None:
        raise BrokerUnavailableError("embedded://", "refused by the test")

    async def main() -> None:
        async with opened(queue_name, "embedded://") as queue:
            jobs = [await queue.enqueue("contract.add", [1, 1], delay=60) for _ in range(2)]
            for job in jobs:
                await queue.cancel(job.id)
            ids = [job.id for job in jobs]
            with monkeypatch.context() as patched:
                patched.setattr(PublishSession, "publish", refuse)
                with pytest.raises(BrokerUnavailableError, match="refused by the test"):
                    await queue.requeue_dead([ids[0]])
            assert (await queue.sizes())[f"{queue_name}.dead"] == 2
            record = await queue.get_job(ids[0])
            assert (record.status, record.dead_reason) == (JobStatus.DEAD, "cancelled")
            assert {entry.job_id for entry in await queue.dead_letters()} == set(ids)
            _, cancelled = queue.store.cancellations(None)
            assert cancelled is not None and set(ids) <= cancelled
            assert await queue.requeue_dead() == ids
            async with running(worker_for(queue)):
                assert [await job.wait(timeout=15) for job in jobs] == [2, 2]

    run(main)
