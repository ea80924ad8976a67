"""The ``JobStore`` contract: one test class that every store's test module subclasses.

A subclass provides a ``store_url`` fixture that names a fresh, empty store (a unique
memory name, a file in ``tmp_path``, a unique Redis key prefix) and cleans it up. It may
override ``assert_expiring`` where its store expires records in its own way.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from uno_jobs.errors import DuplicateJobError
from uno_jobs.store import (
    DeadLetter,
    JobRecord,
    JobStatus,
    JobStore,
    JobUpdate,
    ScheduledJob,
    open_store,
)

StoreFactory = Callable[..., JobStore]

NOW = 1_700_000_000.0


def a_record(job_id: str, **changes: Any) -> JobRecord:
    """A queued record with a few fields set; ``changes`` override them."""
    fields: dict[str, Any] = {
        "id": job_id,
        "task": "reports.generate",
        "queue": "default",
        "status": JobStatus.QUEUED,
        "enqueued_at": NOW,
    }
    fields.update(changes)
    return JobRecord(**fields)


def a_full_record(job_id: str) -> JobRecord:
    """A record with every field set to something other than its default."""
    return JobRecord(
        id=job_id,
        task="my_app.tasks.reports.generate_report",
        queue="reports",
        status=JobStatus.DEAD,
        priority="high",
        attempts=3,
        worker_lost=1,
        enqueued_at=NOW + 0.125,
        started_at=NOW + 1.5,
        finished_at=NOW + 2.75,
        worker_id="async-worker-1",
        result={"pages": 12, "ratio": 0.5, "names": ["ä", "ß"], "ok": True, "none": None},
        result_truncated=False,
        error_type="ValueError",
        error_message="bad month: 13",
        error_traceback='Traceback (most recent call last):\n  File "x.py"\nValueError',
        dead_reason="max_retries_exceeded",
    )


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` in ``count`` threads started together; re-raise the first error."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            start.wait(timeout=10)
            target(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    if errors:
        raise errors[0]


class StoreContract:
    """Behaviour every ``JobStore`` must show. Subclasses provide ``store_url``."""

    @pytest.fixture
    def store_factory(self, store_url: str) -> Iterator[StoreFactory]:
        """Opens stores on the same data as ``store``; closes them at the end."""
        opened: list[JobStore] = []

        def factory(**options: Any) -> JobStore:
            store = open_store(store_url, **options)
            opened.append(store)
            return store

        yield factory
        for store in opened:
            store.close()

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> JobStore:
        return store_factory()

    def assert_expiring(self, store: JobStore, expiring: list[str], lasting: list[str]) -> None:
        """Only the ``expiring`` records are removed once retention has passed."""
        later = time.time() + store.retention_seconds + 1
        assert store.purge_expired(later) == len(expiring)
        assert [job_id for job_id in expiring if store.get(job_id) is not None] == []
        assert [job_id for job_id in lasting if store.get(job_id) is None] == []

    # -- records ---------------------------------------------------------------------------

    def test_store_satisfies_the_protocol(self, store: JobStore) -> None:
        assert isinstance(store, JobStore)

    def test_create_get_round_trips_every_field(self, store: JobStore) -> None:
        full, minimal = a_full_record("full"), JobRecord("min", "t", "q", JobStatus.QUEUED)
        store.create(full)
        store.create(minimal)
        assert store.get("full") == full
        assert store.get("min") == minimal

    @pytest.mark.parametrize(
        "result",
        [0, -7, 2.5, "", "naïve ☃", True, False, [], {}, [1, "a", None, [True]], {"k": {"n": 1}}],
        ids=repr,
    )
    def test_results_round_trip_as_json_values(self, store: JobStore, result: Any) -> None:
        store.create(a_record("r", status=JobStatus.SUCCEEDED, result=result))
        got = store.get("r")
        assert got is not None
        assert got.result == result
        assert type(got.result) is type(result)
        assert got.result_truncated is False

    def test_get_unknown_id_is_none(self, store: JobStore) -> None:
        assert store.get("nope") is None

    def test_create_refuses_an_existing_id(self, store: JobStore) -> None:
        store.create(a_record("a"))
        with pytest.raises(DuplicateJobError) as caught:
            store.create(a_record("a", task="other"))
        assert caught.value.job_id == "a"
        assert store.get("a") == a_record("a")

    def test_create_many_writes_all(self, store: JobStore) -> None:
        records = [a_record(f"m{i}", attempts=i) for i in range(5)]
        store.create_many(records)
        store.create_many([])
        assert [store.get(r.id) for r in records] == records

    def test_create_many_with_an_existing_id_writes_nothing(self, store: JobStore) -> None:
        store.create(a_record("old"))
        with pytest.raises(DuplicateJobError) as caught:
            store.create_many([a_record("new1"), a_record("old"), a_record("new2")])
        assert caught.value.job_id == "old"
        assert store.get("new1") is None
        assert store.get("new2") is None

    def test_create_many_with_a_repeated_id_writes_nothing(self, store: JobStore) -> None:
        with pytest.raises(DuplicateJobError) as caught:
            store.create_many([a_record("x"), a_record("y"), a_record("x")])
        assert caught.value.job_id == "x"
        assert store.get("x") is None
        assert store.get("y") is None

    def test_create_missing_leaves_a_record_a_worker_wrote_first(self, store: JobStore) -> None:
        # A worker that starts a RabbitMQ job before the producer wrote its record
        # creates the record (apply); the producer's late write must keep it as it is.
        store.apply([JobUpdate("early", "t", "q", {"status": "running", "attempts": 1})])
        running = store.get("early")
        store.create_missing([a_record("fresh"), a_record("early"), a_record("other")])  # type: ignore[attr-defined]
        assert running is not None and running.enqueued_at is None
        # Kept as it was, but for the enqueue time it lacked.
        assert store.get("early") == dataclasses.replace(running, enqueued_at=NOW)
        assert store.get("fresh") == a_record("fresh")
        assert store.get("other") == a_record("other")
        store.create_missing([])  # type: ignore[attr-defined]

    def test_create_missing_of_one_record_a_worker_wrote_first(self, store: JobStore) -> None:
        # A lone record (a single enqueue) takes a shorter path than a batch.
        store.apply([JobUpdate("early", "t", "q", {"status": "running", "attempts": 1})])
        running = store.get("early")
        assert running is not None
        store.create_missing([a_record("early")])  # type: ignore[attr-defined]
        assert store.get("early") == dataclasses.replace(running, enqueued_at=NOW)
        store.create_missing([a_record("alone")])  # type: ignore[attr-defined]
        assert store.get("alone") == a_record("alone")

    def test_create_missing_keeps_the_errors_of_a_kept_record(self, store: JobStore) -> None:
        store.apply([JobUpdate("kept", "t", "q", {"status": "running"})])
        store.create_missing([a_full_record("kept"), a_full_record("new")])  # type: ignore[attr-defined]
        kept = store.get("kept")
        assert kept is not None and not kept.errors and kept.status == JobStatus.RUNNING
        assert store.get("new") == a_full_record("new")

    def test_create_missing_takes_the_id_of_an_expired_record(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory(retention_seconds=0.2)
        store.apply([JobUpdate("old", "t", "q", {"status": "succeeded"})])
        wait_for(lambda: store.get("old") is None)
        store.create_missing([a_record("old")])  # type: ignore[attr-defined]
        assert store.get("old") == a_record("old")

    def test_delete_removes_records(self, store: JobStore) -> None:
        store.create_many([a_record("a"), a_record("b"), a_record("c")])
        store.delete(["a", "c", "unknown"])
        store.delete([])
        assert [store.get(i) is None for i in "abc"] == [True, False, True]
        store.create(a_record("a"))  # the id is free again

    # -- apply -----------------------------------------------------------------------------

    def test_apply_moves_a_job_through_its_statuses(self, store: JobStore) -> None:
        store.create(a_record("j"))
        store.apply(
            [
                JobUpdate(
                    "j",
                    "reports.generate",
                    "default",
                    {"status": JobStatus.RUNNING, "started_at": NOW + 1, "attempts": 1},
                )
            ]
        )
        running = store.get("j")
        assert running is not None
        assert (running.status, running.started_at, running.attempts) == ("running", NOW + 1, 1)
        store.apply(
            [
                JobUpdate(
                    "j",
                    "reports.generate",
                    "default",
                    {"status": "succeeded", "result": {"rows": [1, 2]}, "finished_at": NOW + 2},
                )
            ]
        )
        assert store.get("j") == a_record(
            "j",
            status=JobStatus.SUCCEEDED,
            started_at=NOW + 1,
            attempts=1,
            result={"rows": [1, 2]},
            finished_at=NOW + 2,
        )

    def test_apply_runs_a_batch_in_order(self, store: JobStore) -> None:
        store.create_many([a_record("a"), a_record("b")])
        store.apply(
            [
                JobUpdate("a", "t", "q", {"status": "running", "worker_id": "w1"}),
                JobUpdate("b", "t", "q", {"status": "running"}),
                JobUpdate("a", "t", "q", {"status": "succeeded", "result": 1}),
                JobUpdate("b", "t", "q", {"status": "retrying", "attempts": 1}),
                JobUpdate("b", "t", "q", {"status": "running", "attempts": 2}),
            ]
        )
        a, b = store.get("a"), store.get("b")
        assert a is not None and b is not None
        assert (a.status, a.result, a.worker_id) == (JobStatus.SUCCEEDED, 1, "w1")
        assert (b.status, b.attempts, b.task) == (JobStatus.RUNNING, 2, "reports.generate")

    def test_apply_records_a_failure(self, store: JobStore) -> None:
        store.create(a_record("f"))
        error = {
            "status": JobStatus.FAILED,
            "error_type": "ZeroDivisionError",
            "error_message": "division by zero",
            "error_traceback": "Traceback ...\nZeroDivisionError: division by zero",
            "dead_reason": "max_retries_exceeded",
            "attempts": 4,
            "worker_lost": 2,
            "finished_at": NOW + 9,
        }
        store.apply([JobUpdate("f", "t", "q", error)])
        record = store.get("f")
        assert record is not None
        assert {key: getattr(record, key) for key in error} == error
        assert record.result is None

    def test_apply_creates_a_record_it_does_not_know(self, store: JobStore) -> None:
        store.apply(
            [
                JobUpdate("celery-1", "tasks.add", "celery", {"status": "running"}),
                JobUpdate("celery-2", "tasks.mul", "celery", {"attempts": 2}),
            ]
        )
        assert store.get("celery-1") == JobRecord(
            "celery-1", "tasks.add", "celery", JobStatus.RUNNING
        )
        assert store.get("celery-2") == JobRecord(
            "celery-2", "tasks.mul", "celery", JobStatus.QUEUED, attempts=2
        )

    def test_apply_with_a_bad_field_applies_nothing(self, store: JobStore) -> None:
        store.create(a_record("a"))
        batch = [
            JobUpdate("a", "t", "q", {"status": "running"}),
            JobUpdate("a", "t", "q", {"colour": "red"}),
        ]
        with pytest.raises(ValueError, match="colour"):
            store.apply(batch)
        with pytest.raises(ValueError, match="status"):
            store.apply([JobUpdate("a", "t", "q", {"status": "exploded"})])
        assert store.get("a") == a_record("a")

    # -- result cap ------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("result", "kept"),
        [
            ("x" * 98, True),  # exactly 100 bytes of JSON
            ("x" * 99, False),
            ("é" * 40, True),  # 82 bytes
            ("é" * 60, False),  # 62 characters but 122 bytes
            (list(range(60)), False),
            (object(), False),  # not JSON at all
            (float("nan"), False),  # not strict JSON
        ],
        ids=[
            "at-limit",
            "over-limit",
            "multibyte-under",
            "multibyte-over",
            "list",
            "object",
            "nan",
        ],
    )
    def test_results_over_the_cap_are_truncated(
        self, store_factory: StoreFactory, result: Any, kept: bool
    ) -> None:
        store = store_factory(result_limit_bytes=100)
        store.apply([JobUpdate("a", "t", "q", {"status": "succeeded", "result": result})])
        store.create(a_record("b", status=JobStatus.SUCCEEDED, result=result))
        for job_id in ("a", "b"):
            record = store.get(job_id)
            assert record is not None
            assert record.status is JobStatus.SUCCEEDED
            assert (record.result, record.result_truncated) == (
                (result, False) if kept else (None, True)
            )

    # -- retention -------------------------------------------------------------------------

    def test_finished_records_expire_after_retention(self, store_factory: StoreFactory) -> None:
        store = store_factory(retention_seconds=600)
        store.create_many([a_record("queued"), a_record("dead", status=JobStatus.DEAD)])
        store.apply(
            [
                JobUpdate("ok", "t", "q", {"status": "succeeded", "result": 1}),
                JobUpdate("failed", "t", "q", {"status": "failed"}),
                JobUpdate("running", "t", "q", {"status": "running"}),
                # Re-queued after it was dead: it must not expire any more.
                JobUpdate("requeued", "t", "q", {"status": "dead"}),
                JobUpdate("requeued", "t", "q", {"status": "queued"}),
                # An update without a status leaves the expiry alone.
                JobUpdate("ok", "t", "q", {"worker_id": "w"}),
            ]
        )
        self.assert_expiring(
            store,
            expiring=["ok", "failed", "dead"],
            lasting=["queued", "running", "requeued"],
        )

    def test_an_expired_record_reads_as_missing(self, store_factory: StoreFactory) -> None:
        store = store_factory(retention_seconds=0.2)
        store.apply([JobUpdate("a", "t", "q", {"status": "succeeded"})])
        assert store.get("a") is not None
        wait_for(lambda: store.get("a") is None)
        store.create(a_record("a"))  # the id can be used again
        assert store.get("a") == a_record("a")

    def test_an_update_to_an_expired_record_starts_a_new_one(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory(retention_seconds=0.2)
        failure = {"status": "failed", "attempts": 3, "error_type": "E", "error_message": "m"}
        store.apply([JobUpdate("a", "t", "q", failure), JobUpdate("b", "t", "q", failure)])
        wait_for(lambda: store.get("a") is None)
        # One id of the batch expired, the other is new: neither keeps an old field.
        store.apply(
            [
                JobUpdate("a", "t2", "q", {"status": "running"}),
                JobUpdate("c", "t", "q", {"status": "running"}),
            ]
        )
        for job_id, task_name in (("a", "t2"), ("c", "t")):
            assert store.get(job_id) == JobRecord(job_id, task_name, "q", JobStatus.RUNNING)

    def test_purge_trims_old_dead_letters(self, store_factory: StoreFactory) -> None:
        store = store_factory(retention_seconds=100)
        now = time.time()
        for job_id, queue, age in [("old1", "q1", 150), ("old2", "q2", 101), ("new", "q1", 50)]:
            store.add_dead_letter(DeadLetter(job_id, "t", queue, "timeout", None, now - age))
        assert store.purge_expired(now) == 2
        assert [e.job_id for e in store.dead_letters()] == ["new"]
        assert [e.job_id for e in store.dead_letters("q1")] == ["new"]
        assert store.dead_letters("q2") == []

    # -- dead letters ----------------------------------------------------------------------

    def test_dead_letters_are_listed_newest_first_per_queue(self, store: JobStore) -> None:
        entries = [
            DeadLetter("a", "t.a", "q1", "max_retries_exceeded", "ValueError: x", NOW + 1),
            DeadLetter("b", "t.b", "q2", "unknown_task", None, NOW + 3),
            DeadLetter("c", "t.c", "q1", "timeout", "took 300 s", NOW + 2),
            DeadLetter("d", "t.d", "q1", "forbidden_task", "os.system", NOW + 4),
        ]
        for entry in entries:
            store.add_dead_letter(entry)
        a, b, c, d = entries
        assert store.dead_letters() == [d, b, c, a]
        assert store.dead_letters("q1") == [d, c, a]
        assert store.dead_letters("q1", limit=2) == [d, c]
        assert store.dead_letters("q2") == [b]
        assert store.dead_letters("nothing") == []
        assert store.dead_letters(limit=0) == []

    # -- schedule --------------------------------------------------------------------------

    def test_claim_due_returns_only_due_entries(self, store: JobStore) -> None:
        early = ScheduledJob("early", "default.high", NOW - 10, '{"body": 1}')
        due = ScheduledJob("due", "default", NOW, "payload ☃")
        late = ScheduledJob("late", "default", NOW + 100, "later")
        for job in (late, due, early):
            store.schedule(job)
        assert store.scheduled_count() == 3
        assert store.claim_due(NOW, 10, 30) == [early, due]
        assert store.claim_due(NOW, 10, 30) == []  # claimed: leased to the first caller
        assert store.scheduled_count() == 3
        store.release_scheduled(["early", "due"])
        store.release_scheduled([])
        assert store.scheduled_count() == 1
        assert store.claim_due(NOW + 100, 10, 30) == [late]

    def test_claim_due_honours_the_limit(self, store: JobStore) -> None:
        for i in range(5):
            store.schedule(ScheduledJob(f"s{i}", "q", NOW + i, "p"))
        assert [j.job_id for j in store.claim_due(NOW + 10, 2, 30)] == ["s0", "s1"]
        assert [j.job_id for j in store.claim_due(NOW + 10, 2, 30)] == ["s2", "s3"]
        assert [j.job_id for j in store.claim_due(NOW + 10, 2, 30)] == ["s4"]
        assert store.claim_due(NOW + 10, 0, 30) == []

    def test_schedule_replaces_an_entry_with_the_same_id(self, store: JobStore) -> None:
        store.schedule(ScheduledJob("s", "q", NOW + 50, "first"))
        store.schedule(ScheduledJob("s", "q.high", NOW, "second"))
        assert store.scheduled_count() == 1
        assert store.claim_due(NOW, 10, 30) == [ScheduledJob("s", "q.high", NOW, "second")]

    def test_an_unreleased_claim_is_due_again_after_its_lease(self, store: JobStore) -> None:
        job = ScheduledJob("s", "q", NOW, "p")
        store.schedule(job)
        assert store.claim_due(NOW, 10, 30) == [job]
        assert store.claim_due(NOW + 29, 10, 30) == []
        assert store.claim_due(NOW + 31, 10, 30) == [job]
        store.release_scheduled(["s"])
        assert store.claim_due(NOW + 1000, 10, 30) == []
        assert store.scheduled_count() == 0

    def test_concurrent_claimers_never_share_an_entry(self, store_factory: StoreFactory) -> None:
        store = store_factory()
        ids = [f"s{i:03d}" for i in range(300)]
        for job_id in ids:
            store.schedule(ScheduledJob(job_id, "q", NOW, "p"))
        claimers = [store_factory() for _ in range(4)]
        claimed: list[list[str]] = [[] for _ in claimers]

        def claim(index: int) -> None:
            # The length check stops a broken store that hands out entries forever.
            while (batch := claimers[index].claim_due(NOW, 7, 600)) and len(claimed[index]) <= 300:
                claimed[index] += [job.job_id for job in batch]

        run_threads(len(claimers), claim)
        everything = [job_id for got in claimed for job_id in got]
        assert sorted(everything) == ids  # each entry exactly once

    # -- threads ---------------------------------------------------------------------------

    def test_many_threads_applying_at_once(self, store: JobStore) -> None:
        threads, jobs = 6, 30

        def work(index: int) -> None:
            ids = [f"t{index}-{n}" for n in range(jobs)]
            store.create_many([a_record(job_id) for job_id in ids])
            store.apply([JobUpdate(i, "t", "q", {"status": "running"}) for i in ids])
            for job_id in ids:
                assert store.get(job_id) is not None
            store.apply(
                [JobUpdate(i, "t", "q", {"status": "succeeded", "result": [i]}) for i in ids]
            )
            store.add_dead_letter(DeadLetter(ids[0], "t", f"q{index}", "timeout", None, NOW))

        run_threads(threads, work)
        for index in range(threads):
            for n in range(jobs):
                record = store.get(f"t{index}-{n}")
                assert record is not None
                assert (record.status, record.result) == (JobStatus.SUCCEEDED, [f"t{index}-{n}"])
        assert len(store.dead_letters(limit=1000)) == threads
