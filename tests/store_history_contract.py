"""The attempt-history part of the ``JobStore`` contract (``JobRecord.errors``).

Mixed into every store's contract class next to ``StoreContract``, whose ``store`` and
``store_factory`` fixtures it uses.
"""

from __future__ import annotations

import pytest
from store_contract import NOW, StoreFactory, a_record, wait_for

from uno_jobs.store import JobStatus, JobStore, JobUpdate
from uno_jobs.store._base import MAX_ATTEMPT_ERRORS, AttemptError


def an_error(attempt: int, message: str = "boom") -> AttemptError:
    return AttemptError(attempt, "ValueError", f"{message} {attempt}", NOW + attempt, "w-1")


def failed_attempt(job_id: str, attempt: int, **fields: object) -> JobUpdate:
    error = an_error(attempt)
    return JobUpdate(
        job_id,
        "reports.generate",
        "default",
        {
            "attempts": attempt,
            "error_type": error.error_type,
            "error_message": error.error_message,
            "attempt_error": error,
            **fields,
        },
    )


class HistoryContract:
    """Every failed attempt is kept, in order, bounded, and goes when the record goes."""

    def test_failed_attempts_are_appended_in_order(self, store: JobStore) -> None:
        store.create(a_record("a"))
        store.apply([failed_attempt("a", 1, status=JobStatus.RETRYING)])
        store.apply(
            [
                JobUpdate("a", "t", "q", {"status": JobStatus.RUNNING, "attempts": 2}),
                failed_attempt("a", 2, status=JobStatus.SCHEDULED),
            ]
        )
        store.apply([JobUpdate("a", "t", "q", {"status": JobStatus.RUNNING, "attempts": 3})])
        store.apply([failed_attempt("a", 3, status=JobStatus.FAILED)])
        record = store.get("a")
        assert record is not None
        assert record.errors == (an_error(1), an_error(2), an_error(3))
        assert (record.status, record.error_message) == (JobStatus.FAILED, "boom 3")
        assert record.to_dict()["errors"][0] == {
            "attempt": 1,
            "error_type": "ValueError",
            "error_message": "boom 1",
            "failed_at": NOW + 1,
            "worker_id": "w-1",
        }
        assert store.get("b") is None

    def test_an_update_for_an_unknown_job_starts_its_history(self, store: JobStore) -> None:
        store.apply([failed_attempt("celery-sent", 1, status=JobStatus.RETRYING)])
        record = store.get("celery-sent")
        assert record is not None and record.errors == (an_error(1),)

    def test_the_history_keeps_the_newest_attempts(self, store: JobStore) -> None:
        store.create(a_record("a"))
        extra = 7
        store.apply([failed_attempt("a", n) for n in range(1, MAX_ATTEMPT_ERRORS + 1)])
        store.apply([failed_attempt("a", MAX_ATTEMPT_ERRORS + n) for n in range(1, extra + 1)])
        record = store.get("a")
        assert record is not None
        attempts = [error.attempt for error in record.errors]
        assert attempts == list(range(extra + 1, MAX_ATTEMPT_ERRORS + extra + 1))

    def test_create_round_trips_a_history(self, store: JobStore) -> None:
        history = tuple(an_error(n) for n in (1, 2))
        store.create(a_record("a", status=JobStatus.FAILED, errors=history))
        record = store.get("a")
        assert record is not None and record.errors == history
        store.apply([failed_attempt("a", 3)])
        again = store.get("a")
        assert again is not None and again.errors == (*history, an_error(3))

    def test_deleting_a_record_deletes_its_history(self, store: JobStore) -> None:
        store.create(a_record("a"))
        store.apply([failed_attempt("a", 1)])
        store.delete(["a"])
        store.create(a_record("a"))
        record = store.get("a")
        assert record is not None and record.errors == ()

    def test_the_history_expires_with_the_record(self, store_factory: StoreFactory) -> None:
        store = store_factory(retention_seconds=0.3)
        store.create(a_record("a"))
        store.apply([failed_attempt("a", 1), failed_attempt("a", 2, status=JobStatus.FAILED)])
        assert len(getattr(store.get("a"), "errors", ())) == 2
        wait_for(lambda: store.get("a") is None)
        store.apply([JobUpdate("a", "t", "q", {"status": JobStatus.QUEUED})])
        reborn = store.get("a")
        assert reborn is not None and reborn.errors == (), "no history comes back"

    def test_a_bad_attempt_error_is_refused_and_nothing_applied(self, store: JobStore) -> None:
        store.create(a_record("a"))
        bad = JobUpdate("a", "t", "q", {"attempt_error": {"attempt": "first"}})
        with pytest.raises(ValueError, match="job a: bad attempt error"):
            store.apply([failed_attempt("a", 1), bad])
        record = store.get("a")
        assert record is not None and record.errors == () and record.attempts == 0
