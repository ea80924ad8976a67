"""Where ``Queue`` writes a job's record relative to publishing its message.

RabbitMQ: a generated id's record is written while the broker confirms the message
(``create_missing``); an id of the caller's is written (and refused if taken) before
anything is sent. Redis with the store on the broker's database: one script for both
(``tests/integration/test_batch_publish.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import AMQP_URL

from uno_jobs import JobSpec, Queue
from uno_jobs.errors import BrokerUnavailableError, DuplicateJobError, StoreUnavailableError
from uno_jobs.store import JobStatus, JobUpdate

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(uno_home: Any, queue_name: str) -> Iterator[Queue]:
    q = Queue(queue_name, broker_url=AMQP_URL, store_url=f"memory://{queue_name}")
    try:
        yield q
    finally:
        asyncio.run(q.delete())
        q.close()


class Calls:
    """Wraps a store's create methods, counting calls and running ``before`` first."""

    def __init__(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.many: list[list[str]] = []
        self.missing: list[list[str]] = []
        self.before: Any = None
        real_many, real_missing = store.create_many, store.create_missing

        def create_many(records: Any) -> None:
            self.many.append([r.id for r in records])
            real_many(records)

        def create_missing(records: Any) -> None:
            self.missing.append([r.id for r in records])
            if self.before is not None:
                self.before(records)
            real_missing(records)

        monkeypatch.setattr(store, "create_many", create_many)
        monkeypatch.setattr(store, "create_missing", create_missing)


def test_a_generated_id_is_recorded_while_the_broker_confirms(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(queue.store, monkeypatch)
    handles = queue.enqueue_many_sync([JobSpec("contract.noop", [n]) for n in range(3)])
    ids = [h.id for h in handles]
    assert calls.missing == [ids] and calls.many == []
    assert [queue.get_job_sync(i).status for i in ids] == [JobStatus.QUEUED] * 3
    assert queue.size_sync() == 3


def test_a_record_a_worker_wrote_first_is_kept(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(queue.store, monkeypatch)

    def worker_first(records: Any) -> None:
        # What a worker that took the message before the producer's write records.
        update = {"status": "running", "attempts": 1, "worker_id": "w1"}
        queue.store.apply([JobUpdate(records[0].id, "contract.noop", queue.name, update)])

    calls.before = worker_first
    job = queue.enqueue_sync("contract.noop")
    record = queue.get_job_sync(job.id)
    assert (record.status, record.attempts, record.worker_id) == (JobStatus.RUNNING, 1, "w1")


def test_a_failed_record_write_is_raised_after_the_confirm(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(queue.store, monkeypatch)

    def store_down(records: Any) -> None:
        raise StoreUnavailableError(queue.store_url, "connection refused")

    calls.before = store_down
    with pytest.raises(StoreUnavailableError, match="connection refused"):
        queue.enqueue_sync("contract.noop")
    # The message was with the broker already; it is not taken back (the job runs, and
    # its worker records it), and the publish session goes on working.
    assert queue.size_sync() == 1
    calls.before = None
    queue.enqueue_sync("contract.noop")
    assert queue.size_sync() == 2


def test_an_id_of_the_callers_is_recorded_before_anything_is_sent(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(queue.store, monkeypatch)
    own = f"own-{uuid.uuid4().hex[:8]}"
    queue.enqueue_sync("contract.noop", job_id=own)
    assert calls.many == [[own]] and calls.missing == []
    with pytest.raises(DuplicateJobError, match=own):
        queue.enqueue_many_sync([JobSpec("contract.noop"), JobSpec("contract.noop", job_id=own)])
    assert queue.size_sync() == 1


def test_a_broker_that_is_down_leaves_no_record(uno_home: Any, queue_name: str) -> None:
    down = Queue(
        queue_name,
        broker_url="amqp://guest:guest@127.0.0.1:1//?connect_timeout=1",
        store_url=f"memory://{queue_name}",
    )
    try:
        with pytest.raises(BrokerUnavailableError):
            down.enqueue_sync("contract.noop")
        assert down.store._data.records == {}  # type: ignore[attr-defined]
    finally:
        down.close()
