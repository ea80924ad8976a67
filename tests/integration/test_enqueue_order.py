"""Where ``Queue`` writes a job's record relative to publishing its message.

RabbitMQ: a generated id's record is written while the broker confirms the message
(``create_missing``); an id of the caller's is written (and refused if taken) before
anything is sent. The embedded broker: a batch of ``RECORD_THREAD_JOBS`` or more has its
records written in the queue's record thread while the messages go in; a smaller one,
records first. Redis with the store on the broker's database: one script for both
(``tests/integration/test_batch_publish.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import AMQP_URL

from uno_jobs import JobSpec, Queue
from uno_jobs.errors import BrokerUnavailableError, DuplicateJobError, StoreUnavailableError
from uno_jobs.queue import RECORD_THREAD_JOBS
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


@pytest.fixture
def embedded_queue(uno_home: Any, queue_name: str) -> Iterator[Queue]:
    q = Queue(queue_name, broker_url="embedded://")  # the SQLite store under the home
    try:
        yield q
    finally:
        q.close()


def _batch(size: int) -> list[JobSpec]:
    return [JobSpec("contract.noop", [n]) for n in range(size)]


def _record_threads(queue_name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"uno-records-{queue_name}_")]


def test_an_embedded_batch_has_its_records_written_beside_its_messages(
    embedded_queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = embedded_queue
    calls = Calls(queue.store, monkeypatch)
    writers: list[str] = []
    calls.before = lambda records: writers.append(threading.current_thread().name)
    handles = queue.enqueue_many_sync(_batch(RECORD_THREAD_JOBS))
    ids = [h.id for h in handles]
    assert calls.missing == [ids] and calls.many == []
    assert writers == [f"uno-records-{queue.name}_0"]
    assert {queue.get_job_sync(i).status for i in ids} == {JobStatus.QUEUED}
    assert queue.size_sync() == RECORD_THREAD_JOBS
    # A smaller batch: its records first, in this thread, as before.
    small = queue.enqueue_many_sync(_batch(RECORD_THREAD_JOBS - 1))
    assert calls.many == [[h.id for h in small]] and len(calls.missing) == 1
    assert queue.size_sync() == 2 * RECORD_THREAD_JOBS - 1


def test_an_embedded_batch_whose_publish_fails_leaves_no_record(
    embedded_queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = embedded_queue
    calls = Calls(queue.store, monkeypatch)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise BrokerUnavailableError("embedded://", "database or disk is full")

    monkeypatch.setattr(queue._broker, "publish", disk_full)
    with pytest.raises(BrokerUnavailableError, match="disk is full"):
        queue.enqueue_many_sync(_batch(RECORD_THREAD_JOBS))
    [ids] = calls.missing  # written in the thread, then deleted
    assert [queue.store.get(i) for i in ids] == [None] * len(ids)


def test_an_embedded_batch_whose_record_write_fails_raises_once_its_messages_are_in(
    embedded_queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = embedded_queue
    calls = Calls(queue.store, monkeypatch)

    def store_down(records: Any) -> None:
        raise StoreUnavailableError(queue.store_url, "disk I/O error")

    calls.before = store_down
    with pytest.raises(StoreUnavailableError, match="disk I/O error"):
        queue.enqueue_many_sync(_batch(RECORD_THREAD_JOBS))
    assert queue.size_sync() == RECORD_THREAD_JOBS  # not taken back: their worker records them
    calls.before = None
    queue.enqueue_many_sync(_batch(RECORD_THREAD_JOBS))
    assert queue.size_sync() == 2 * RECORD_THREAD_JOBS


def test_closing_the_queue_stops_its_record_thread(uno_home: Any, queue_name: str) -> None:
    queue = Queue(queue_name, broker_url="embedded://")
    try:
        queue.enqueue_many_sync(_batch(RECORD_THREAD_JOBS))
        assert [t.name for t in _record_threads(queue_name)] == [f"uno-records-{queue_name}_0"]
    finally:
        queue.close()
    assert _record_threads(queue_name) == []


def test_a_forked_child_gets_a_record_thread_of_its_own(embedded_queue: Queue) -> None:
    """The parent's record thread is not in a forked child: a batch there must not wait
    for it forever."""
    queue = embedded_queue
    queue.enqueue_many_sync(_batch(RECORD_THREAD_JOBS))  # the parent's thread is running
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if its batch went in
        code = 1
        try:
            queue.enqueue_many_sync(_batch(RECORD_THREAD_JOBS))
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's batch did not finish in 60 s")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert queue.size_sync() == 2 * RECORD_THREAD_JOBS
