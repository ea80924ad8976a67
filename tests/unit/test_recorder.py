"""The recorder thread: outcomes are written in batches, and acks happen only after."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, cast

import pytest
from conftest import wait_until

from uno_jobs.store import DeadLetter, JobStatus, JobStore, JobUpdate, open_store
from uno_jobs.worker._recorder import Entry, Recorder


class SpyStore:
    """Wraps a real store: records ``apply`` batches, can fail or block them.

    Args:
        inner: The store that does the work.
        failures: How many ``apply`` calls raise before they start to succeed
            (``-1``: all of them).
        gate: If given, ``apply`` waits for it before writing.
    """

    def __init__(
        self, inner: JobStore, failures: int = 0, gate: threading.Event | None = None
    ) -> None:
        self.inner = inner
        self.failures = failures
        self.gate = gate
        self.calls = 0
        self.batches: list[list[JobUpdate]] = []
        self.dead: list[DeadLetter] = []
        self.events: list[str] = []

    def apply(self, updates: Sequence[JobUpdate]) -> None:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.failures != 0:
            self.failures -= 1 if self.failures > 0 else 0
            self.events.append("apply failed")
            raise ConnectionError("store is down")
        self.inner.apply(updates)
        self.batches.append(list(updates))
        self.events.append(f"applied {[u.job_id for u in updates]}")

    def add_dead_letter(self, entry: DeadLetter) -> None:
        self.inner.add_dead_letter(entry)
        self.dead.append(entry)
        self.events.append(f"dead {entry.job_id}")

    def get(self, job_id: str) -> Any:
        return self.inner.get(job_id)

    def __repr__(self) -> str:
        return "SpyStore()"


@pytest.fixture
def store() -> Iterator[JobStore]:
    opened = open_store(f"memory://recorder-{uuid.uuid4().hex}")
    yield opened
    opened.close()


def make_recorder(spy: SpyStore) -> Recorder:
    return Recorder(cast(JobStore, spy), "test")


def update(job_id: str, **fields: Any) -> JobUpdate:
    return JobUpdate(job_id, "t.task", "q", fields)


def stop(recorder: Recorder) -> None:
    if recorder.is_alive():
        recorder.stop(timeout=5)


def test_entries_are_applied_in_order_and_after_runs_after_the_write(store: JobStore) -> None:
    spy = SpyStore(store)
    recorder = make_recorder(spy)
    seen: list[tuple[str, JobStatus | None]] = []

    def after(job_id: str) -> Any:
        def action() -> None:
            record = store.get(job_id)
            seen.append((job_id, record.status if record else None))
            spy.events.append(f"after {job_id}")

        return action

    # Put before the thread starts, so all of them are one batch.
    for i in range(5):
        recorder.put(Entry([update(f"j{i}", status=JobStatus.SUCCEEDED)], after=after(f"j{i}")))
    recorder.start()
    try:
        assert recorder.flush(timeout=5)
        assert [[u.job_id for u in batch] for batch in spy.batches] == [
            ["j0", "j1", "j2", "j3", "j4"]
        ]
        assert seen == [(f"j{i}", JobStatus.SUCCEEDED) for i in range(5)]
        assert spy.events[0].startswith("applied"), "the write comes before every action"
    finally:
        stop(recorder)


def test_later_batches_apply_after_earlier_ones(store: JobStore) -> None:
    spy = SpyStore(store)
    recorder = make_recorder(spy)
    recorder.start()
    try:
        recorder.put(Entry([update("j", status=JobStatus.RUNNING, worker_id="w")]))
        assert recorder.flush(timeout=5)
        record = store.get("j")
        assert record is not None and record.status == JobStatus.RUNNING
        recorder.put(Entry([update("j", status=JobStatus.SUCCEEDED, result=3)]))
        assert recorder.flush(timeout=5)
        record = store.get("j")
        assert record is not None
        assert (record.status, record.result, record.worker_id) == (JobStatus.SUCCEEDED, 3, "w")
    finally:
        stop(recorder)


def test_updates_of_one_job_in_a_batch_are_merged(store: JobStore) -> None:
    spy = SpyStore(store)
    recorder = make_recorder(spy)
    recorder.put(
        Entry([update("a", status=JobStatus.RUNNING, started_at=1.0, worker_id="w", attempts=1)])
    )
    recorder.put(Entry([update("b", status=JobStatus.RUNNING, started_at=2.0)]))
    recorder.put(Entry([update("a", status=JobStatus.SUCCEEDED, finished_at=3.0, result="ok")]))
    recorder.put(Entry([update("a", worker_id="w2")]))
    recorder.start()
    try:
        assert recorder.flush(timeout=5)
        assert len(spy.batches) == 1
        batch = spy.batches[0]
        assert [u.job_id for u in batch] == ["a", "b"], "one write per job, first-seen order"
        assert batch[0].fields == {
            "status": JobStatus.SUCCEEDED,
            "started_at": 1.0,
            "worker_id": "w2",
            "attempts": 1,
            "finished_at": 3.0,
            "result": "ok",
        }
        record = store.get("a")
        assert record is not None
        assert (record.status, record.started_at, record.finished_at) == (
            JobStatus.SUCCEEDED,
            1.0,
            3.0,
        )
        assert (record.worker_id, record.result, record.attempts) == ("w2", "ok", 1)
    finally:
        stop(recorder)


def test_big_backlogs_are_written_in_bounded_batches(store: JobStore) -> None:
    spy = SpyStore(store)
    recorder = make_recorder(spy)
    for i in range(1200):
        recorder.put(Entry([update(f"j{i}", status=JobStatus.QUEUED)]))
    recorder.start()
    try:
        assert recorder.flush(timeout=10)
        sizes = [len(batch) for batch in spy.batches]
        assert sum(sizes) == 1200
        assert max(sizes) <= 500
        assert [u.job_id for batch in spy.batches for u in batch] == [f"j{i}" for i in range(1200)]
    finally:
        stop(recorder)


def test_failing_store_is_retried_and_after_runs_only_after_success(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    spy = SpyStore(store, failures=2)
    recorder = make_recorder(spy)
    acked: list[int] = []
    recorder.put(
        Entry(
            [update("j", status=JobStatus.FAILED, error_type="ValueError")],
            after=lambda: acked.append(len(spy.batches)),
        )
    )
    with caplog.at_level(logging.ERROR, logger="uno_jobs.worker"):
        recorder.start()
        try:
            assert recorder.flush(timeout=10)
        finally:
            stop(recorder)
    assert spy.calls == 3
    assert spy.events == ["apply failed", "apply failed", "applied ['j']"]
    assert acked == [1], "the action ran once, after the successful write"
    record = store.get("j")
    assert record is not None and record.status == JobStatus.FAILED
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    assert "stay unacknowledged" in retries[0].getMessage()


def test_after_action_never_runs_while_the_store_fails(store: JobStore) -> None:
    spy = SpyStore(store, failures=-1)
    recorder = make_recorder(spy)
    acked = threading.Event()
    recorder.put(Entry([update("j", status=JobStatus.SUCCEEDED)], after=acked.set))
    recorder.start()
    try:
        wait_until(lambda: spy.calls >= 2, timeout=5)
        assert not acked.is_set()
        assert store.get("j") is None
        assert not recorder.flush(timeout=0.05)
    finally:
        spy.failures = 0  # let it finish so the thread can stop
        assert recorder.flush(timeout=10)
        stop(recorder)
    assert acked.is_set()


def test_dead_letters_are_indexed_before_the_action(store: JobStore) -> None:
    spy = SpyStore(store)
    recorder = make_recorder(spy)
    letter = DeadLetter("d", "t.task", "q", "unknown_task", "no such task", time.time())
    recorder.put(
        Entry(
            [update("d", status=JobStatus.DEAD, dead_reason="unknown_task")],
            dead=letter,
            after=lambda: spy.events.append("after d"),
        )
    )
    recorder.start()
    try:
        assert recorder.flush(timeout=5)
    finally:
        stop(recorder)
    assert spy.events == ["applied ['d']", "dead d", "after d"]
    assert store.dead_letters("q") == [letter]


def test_a_raising_action_is_logged_and_the_others_still_run(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    spy = SpyStore(store)
    recorder = make_recorder(spy)
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("ack failed")

    recorder.put(Entry([update("a", status=JobStatus.SUCCEEDED)], after=broken))
    recorder.put(Entry([update("b", status=JobStatus.SUCCEEDED)], after=lambda: ran.append("b")))
    with caplog.at_level(logging.ERROR, logger="uno_jobs.worker"):
        recorder.start()
        try:
            assert recorder.flush(timeout=5)
        finally:
            stop(recorder)
    assert ran == ["b"]
    assert any("post-record action failed" in r.getMessage() for r in caplog.records)


def test_flush_waits_for_the_write_and_its_actions(store: JobStore) -> None:
    gate = threading.Event()
    spy = SpyStore(store, gate=gate)
    recorder = make_recorder(spy)
    acked = threading.Event()
    recorder.start()
    try:
        recorder.put(Entry([update("j", status=JobStatus.SUCCEEDED)], after=acked.set))
        wait_until(lambda: spy.calls == 1, timeout=5)
        assert not recorder.flush(timeout=0.1), "flush cannot finish while the write hangs"
        assert not acked.is_set()
        gate.set()
        assert recorder.flush(timeout=5)
        assert acked.is_set()
        assert store.get("j") is not None
    finally:
        gate.set()
        stop(recorder)


def test_flush_with_nothing_pending_returns_at_once(store: JobStore) -> None:
    recorder = make_recorder(SpyStore(store))
    recorder.start()
    try:
        assert recorder.flush(timeout=5)
    finally:
        stop(recorder)


def test_stop_writes_what_was_put_and_ends_the_thread(store: JobStore) -> None:
    spy = SpyStore(store)
    recorder = make_recorder(spy)
    acked: list[str] = []
    recorder.start()
    recorder.put(Entry([update("j", status=JobStatus.SUCCEEDED)], after=lambda: acked.append("j")))
    recorder.stop(timeout=5)
    assert not recorder.is_alive()
    assert acked == ["j"]
    assert store.get("j") is not None


def test_stop_ends_the_thread_even_while_the_store_fails(store: JobStore) -> None:
    spy = SpyStore(store, failures=-1)
    recorder = make_recorder(spy)
    recorder.put(Entry([update("j", status=JobStatus.SUCCEEDED)]))
    recorder.start()
    try:
        wait_until(lambda: spy.calls >= 1, timeout=5)
        recorder.stop(timeout=0.5)
        assert not recorder.is_alive()
    finally:
        spy.failures = 0
        stop(recorder)


class FlakyResults:
    """A result sink (``CeleryResults``'s place) that fails its first ``failures`` writes."""

    def __init__(self, events: list[str], failures: int) -> None:
        self.events = events
        self.failures = failures

    def write(self, updates: Sequence[JobUpdate]) -> None:
        if self.failures:
            self.failures -= 1
            self.events.append("results failed")
            raise ConnectionError("result backend is down")
        self.events.append(f"results {[u.job_id for u in updates]}")


def test_a_failing_result_sink_is_retried_alone_and_the_ack_waits(store: JobStore) -> None:
    spy = SpyStore(store)
    results = FlakyResults(spy.events, failures=2)
    recorder = Recorder(cast(JobStore, spy), "test", results)
    recorder.put(
        Entry(
            [update("j", status=JobStatus.SUCCEEDED, result=1)],
            after=lambda: spy.events.append("ack j"),
        )
    )
    recorder.start()
    try:
        assert recorder.flush(timeout=10)
        # The store is written once (a retry would apply the updates twice), the sink
        # until it works, and only then is the message acked.
        assert spy.events == [
            "applied ['j']",
            "results failed",
            "results failed",
            "results ['j']",
            "ack j",
        ]
    finally:
        stop(recorder)
