"""The ``JobStore`` contract for cancellation, un-scheduling and dead-letter removal.

A mixin beside ``StoreContract``: every store's test class lists both, and this one uses
the ``store`` and ``store_factory`` fixtures that ``StoreContract`` defines.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from uno_jobs.store import DeadLetter, JobStore, ScheduledJob

StoreFactory = Callable[..., JobStore]

NOW = 1_700_000_000.0


class CancellationContract:
    """Cancelled ids, their version, ``unschedule`` and ``remove_dead_letters``."""

    # -- cancelled ids -----------------------------------------------------------------------

    def test_a_new_store_has_no_cancellations(self, store: JobStore) -> None:
        version, ids = store.cancellations(None)
        assert ids == frozenset()
        assert store.cancellations(version) == (version, None)

    def test_cancel_moves_the_version_and_adds_the_id(self, store: JobStore) -> None:
        before, _ = store.cancellations(None)
        store.cancel("a", time.time())
        version, ids = store.cancellations(before)
        assert version != before
        assert ids == {"a"}
        assert store.cancellations(version) == (version, None)  # nothing changed since
        store.cancel("b", time.time())
        later, ids = store.cancellations(version)
        assert later not in (before, version)
        assert ids == {"a", "b"}

    def test_cancelled_ids_are_shared_by_stores_of_the_same_data(
        self, store_factory: StoreFactory
    ) -> None:
        first, second = store_factory(), store_factory()
        known, _ = second.cancellations(None)
        first.cancel("shared", time.time())
        version, ids = second.cancellations(known)
        assert version != known and ids == {"shared"}

    def test_uncancel_removes_ids_and_moves_the_version(self, store: JobStore) -> None:
        store.cancel("a", time.time())
        store.cancel("b", time.time())
        version, _ = store.cancellations(None)
        store.uncancel(["a", "unknown"])
        after, ids = store.cancellations(version)
        assert after != version and ids == {"b"}
        store.uncancel(["unknown", "a"])  # nothing was there: the version stays
        store.uncancel([])
        assert store.cancellations(after) == (after, None)

    def test_cancellations_past_retention_are_not_returned_and_are_purged(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory(retention_seconds=100)
        now = time.time()
        store.cancel("old", now - 150)
        store.cancel("new", now - 50)
        _, ids = store.cancellations(None)
        assert ids == {"new"}
        assert store.purge_expired(now) == 1
        _, ids = store.cancellations(None)
        assert ids == {"new"}

    # -- unschedule --------------------------------------------------------------------------

    def test_unschedule_removes_and_returns_a_waiting_entry(self, store: JobStore) -> None:
        job = ScheduledJob("s", "q.high", NOW + 100, '{"body": "x"}')
        store.schedule(job)
        store.schedule(ScheduledJob("other", "q", NOW + 100, "p"))
        assert store.unschedule("s", NOW) == job
        assert store.unschedule("s", NOW) is None
        assert store.unschedule("never", NOW) is None
        assert store.scheduled_count() == 1
        assert [j.job_id for j in store.claim_due(NOW + 200, 10, 30)] == ["other"]

    def test_unschedule_removes_a_due_entry_nobody_claimed(self, store: JobStore) -> None:
        store.schedule(ScheduledJob("due", "q", NOW - 5, "p"))
        assert store.unschedule("due", NOW) == ScheduledJob("due", "q", NOW - 5, "p")
        assert store.claim_due(NOW, 10, 30) == []

    def test_unschedule_leaves_a_claimed_entry_to_its_mover(self, store: JobStore) -> None:
        job = ScheduledJob("c", "q", NOW, "p")
        store.schedule(job)
        assert store.claim_due(NOW, 10, 30) == [job]
        assert store.unschedule("c", NOW + 1) is None  # being published
        assert store.scheduled_count() == 1
        # A mover that died leaves it claimable after the lease: then it can be taken.
        assert store.unschedule("c", NOW + 31) == job
        assert store.scheduled_count() == 0

    # -- dead-letter removal -----------------------------------------------------------------

    def test_remove_dead_letters_of_some_ids_in_one_queue(self, store: JobStore) -> None:
        entries = [
            DeadLetter("a", "t", "q1", "timeout", None, NOW + 1),
            DeadLetter("b", "t", "q1", "cancelled", "by request", NOW + 2),
            DeadLetter("a", "t", "q2", "timeout", None, NOW + 3),
            DeadLetter("c", "t", "q1", "unknown_task", "x", NOW + 4),
        ]
        for entry in entries:
            store.add_dead_letter(entry)
        assert store.remove_dead_letters("q1", ["a", "c", "zzz"]) == 2
        assert store.remove_dead_letters("q1", []) == 0
        assert store.dead_letters("q1") == [entries[1]]
        assert store.dead_letters("q2") == [entries[2]]
        assert store.dead_letters() == [entries[2], entries[1]]

    def test_remove_every_dead_letter_of_a_queue(self, store: JobStore) -> None:
        for i, queue in enumerate(["q1", "q2", "q1"]):
            store.add_dead_letter(DeadLetter(f"j{i}", "t", queue, "timeout", None, NOW + i))
        assert store.remove_dead_letters("q1") == 2
        assert store.remove_dead_letters("q1") == 0
        assert [e.job_id for e in store.dead_letters()] == ["j1"]
        store.add_dead_letter(DeadLetter("again", "t", "q1", "timeout", None, NOW + 9))
        assert [e.job_id for e in store.dead_letters("q1")] == ["again"]
