"""The in-process job store (``memory://``), for tests and single-process experiments.

Stores opened with the same URL in one process share their data, so a ``Queue`` and a
worker configured alike see the same records, as they would with SQLite or Redis. The data
lives as long as the process; use a distinct name (``memory://test-42``) to keep tests
apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from uno_jobs.errors import DuplicateJobError
from uno_jobs.store._base import (
    ATTEMPT_ERROR,
    DEFAULT_RESULT_LIMIT_BYTES,
    DEFAULT_RETENTION_SECONDS,
    FINISHED,
    MAX_ATTEMPT_ERRORS,
    DeadLetter,
    JobRecord,
    JobStatus,
    JobUpdate,
    ScheduledJob,
    first_repeated,
    record_columns,
    record_from_columns,
    update_columns,
)

__all__ = ["MemoryStore"]

_FINISHED_VALUES = frozenset(status.value for status in FINISHED)


@dataclass
class _Data:
    lock: threading.Lock = field(default_factory=threading.Lock)
    # job id -> stored-form columns plus "expires_at" (None while the job is not finished);
    # "errors" is a list of AttemptError.to_dict() mappings, oldest first
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    # job id -> (entry, time from which it may be claimed)
    scheduled: dict[str, tuple[ScheduledJob, float]] = field(default_factory=dict)
    # cancelled job id -> when it was cancelled; the version moves on with every change
    cancelled: dict[str, float] = field(default_factory=dict)
    cancel_version: int = 0


_shared: dict[str, _Data] = {}
_shared_lock = threading.Lock()


def _data_named(name: str) -> _Data:
    with _shared_lock:
        return _shared.setdefault(name, _Data())


class MemoryStore:
    """A ``JobStore`` kept in dictionaries behind one lock.

    Results are kept JSON-encoded, exactly as the other stores keep them, so a test that
    passes here behaves the same on SQLite and Redis.

    Args:
        url: ``memory://`` or ``memory://NAME``; stores with the same URL share data.
        retention_seconds: How long finished records and dead letters are kept.
        result_limit_bytes: The largest JSON-encoded result that is stored.
    """

    local_reads = True  # see JobStore

    def __init__(
        self,
        url: str = "memory://",
        *,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        result_limit_bytes: int = DEFAULT_RESULT_LIMIT_BYTES,
    ) -> None:
        self.url = url
        self.retention_seconds = retention_seconds
        self.result_limit_bytes = result_limit_bytes
        self._data = _data_named(url.rstrip("/"))

    def __repr__(self) -> str:
        return f"MemoryStore({self.url!r})"

    def _expiry(self, status: str, now: float) -> float | None:
        return now + self.retention_seconds if status in _FINISHED_VALUES else None

    def _live(self, job_id: str, now: float) -> dict[str, Any] | None:
        row = self._data.records.get(job_id)
        if row is None:
            return None
        expires_at = row["expires_at"]
        if expires_at is not None and expires_at <= now:
            return None
        return row

    def create(self, record: JobRecord) -> None:
        """Insert a new record. Raises ``DuplicateJobError`` if the id exists."""
        self.create_many([record])

    def create_many(self, records: Sequence[JobRecord]) -> None:
        """Insert many new records at once; all or nothing.

        Raises:
            DuplicateJobError: The first id that exists (or repeats); nothing is written.
        """
        repeated = first_repeated(record.id for record in records)
        if repeated is not None:
            raise DuplicateJobError(repeated)
        rows = [record_columns(record, self.result_limit_bytes) for record in records]
        with self._data.lock:
            now = time.time()
            for row in rows:
                if self._live(row["id"], now) is not None:
                    raise DuplicateJobError(row["id"])
            for row in rows:
                row["expires_at"] = self._expiry(row["status"], now)
                self._data.records[row["id"]] = row

    def create_missing(self, records: Sequence[JobRecord]) -> None:
        """Insert the records whose id has none yet; an existing record (a worker that
        started the job first) is left as it is, but for an enqueue time it lacks."""
        rows = [record_columns(record, self.result_limit_bytes) for record in records]
        with self._data.lock:
            now = time.time()
            for row in rows:
                live = self._live(row["id"], now)
                if live is None:
                    row["expires_at"] = self._expiry(row["status"], now)
                    self._data.records[row["id"]] = row
                elif live.get("enqueued_at") is None:
                    live["enqueued_at"] = row["enqueued_at"]

    def delete(self, job_ids: Iterable[str]) -> None:
        """Remove records (used to undo ``create`` when a publish failed)."""
        with self._data.lock:
            for job_id in job_ids:
                self._data.records.pop(job_id, None)

    def get(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id``, or ``None`` if there is none or it expired."""
        with self._data.lock:
            row = self._live(job_id, time.time())
            return None if row is None else record_from_columns(row)

    def apply(self, updates: Sequence[JobUpdate]) -> None:
        """Apply updates in order, all or none (see ``JobStore.apply``).

        A finished status sets the expiry, any other status clears it. Results that are
        too large or not JSON are stored as ``None`` with ``result_truncated=True``.

        Raises:
            ValueError: An update names an unknown field or status; nothing is applied.
        """
        changes = [(u, update_columns(u, self.result_limit_bytes)) for u in updates]
        with self._data.lock:
            now = time.time()
            for update, columns in changes:
                row = self._live(update.job_id, now)
                if row is None:
                    row = {"id": update.job_id, "task": update.task, "queue": update.queue}
                    row["status"] = JobStatus.QUEUED.value
                    row["expires_at"] = None
                    row["errors"] = []
                    self._data.records[update.job_id] = row
                error = columns.pop(ATTEMPT_ERROR, None)
                if error is not None:
                    row["errors"] = [*row["errors"], error.to_dict()][-MAX_ATTEMPT_ERRORS:]
                row.update(columns)
                if "status" in columns:
                    row["expires_at"] = self._expiry(columns["status"], now)

    def add_dead_letter(self, entry: DeadLetter) -> None:
        """Index a dead-lettered job under its queue."""
        with self._data.lock:
            self._data.dead.append(entry)

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of ``queue`` (or of every queue), newest first."""
        with self._data.lock:
            entries = [e for e in self._data.dead if queue is None or e.queue == queue]
        # A stable sort on the reversed list keeps the later of two equal times first.
        entries.reverse()
        entries.sort(key=lambda entry: entry.dead_at, reverse=True)
        return entries[: max(limit, 0)]

    def schedule(self, job: ScheduledJob) -> None:
        """Keep a message until ``due_at`` (replaces an entry with the same job id)."""
        with self._data.lock:
            self._data.scheduled[job.job_id] = (job, job.due_at)

    def claim_due(self, now: float, limit: int, lease_seconds: float) -> list[ScheduledJob]:
        """Claim up to ``limit`` due entries for ``lease_seconds`` (see ``JobStore``)."""
        if limit <= 0:
            return []
        with self._data.lock:
            due = [pair for pair in self._data.scheduled.values() if pair[1] <= now]
            due.sort(key=lambda pair: pair[1])
            claimed = [job for job, _ in due[:limit]]
            for job in claimed:
                self._data.scheduled[job.job_id] = (job, now + lease_seconds)
        return claimed

    def release_scheduled(self, job_ids: Sequence[str]) -> None:
        """Remove entries after they were published."""
        with self._data.lock:
            for job_id in job_ids:
                self._data.scheduled.pop(job_id, None)

    def scheduled_count(self) -> int:
        """How many entries are waiting (claimed ones included)."""
        with self._data.lock:
            return len(self._data.scheduled)

    def purge_expired(self, now: float) -> int:
        """Delete finished records, dead letters and cancellations past retention.

        Returns how many were deleted.
        """
        cutoff = now - self.retention_seconds
        with self._data.lock:
            cancelled = self._data.cancelled
            old = [job_id for job_id, at in cancelled.items() if at <= cutoff]
            for job_id in old:
                del cancelled[job_id]
            records = self._data.records
            expired = [
                job_id
                for job_id, row in records.items()
                if row["expires_at"] is not None and row["expires_at"] <= now
            ]
            for job_id in expired:
                del records[job_id]
            kept = [entry for entry in self._data.dead if entry.dead_at > cutoff]
            purged_letters = len(self._data.dead) - len(kept)
            self._data.dead = kept
        return len(expired) + purged_letters + len(old)

    def remove_dead_letters(self, queue: str, job_ids: Iterable[str] | None = None) -> int:
        """Remove the dead letters of ``job_ids`` in ``queue`` (all when ``None``)."""
        wanted = None if job_ids is None else set(job_ids)
        with self._data.lock:
            kept = [
                entry
                for entry in self._data.dead
                if entry.queue != queue or (wanted is not None and entry.job_id not in wanted)
            ]
            removed = len(self._data.dead) - len(kept)
            self._data.dead = kept
        return removed

    def unschedule(self, job_id: str, now: float) -> ScheduledJob | None:
        """Remove and return the entry of ``job_id`` unless a mover holds it claimed."""
        with self._data.lock:
            pair = self._data.scheduled.get(job_id)
            if pair is None or _claimed(pair[0], pair[1], now):
                return None
            del self._data.scheduled[job_id]
            return pair[0]

    def cancel(self, job_id: str, cancelled_at: float) -> None:
        """Add ``job_id`` to the cancelled ids and move their version on."""
        with self._data.lock:
            self._data.cancelled[job_id] = cancelled_at
            self._data.cancel_version += 1

    def uncancel(self, job_ids: Iterable[str]) -> None:
        """Remove ids from the cancelled ids (moving the version on if any was there)."""
        with self._data.lock:
            removed = [self._data.cancelled.pop(job_id, None) for job_id in job_ids]
            if any(at is not None for at in removed):
                self._data.cancel_version += 1

    def cancellations(self, known_version: int | None) -> tuple[int, frozenset[str] | None]:
        """The version of the cancelled ids, and the ids unless that is ``known_version``."""
        cutoff = time.time() - self.retention_seconds
        with self._data.lock:
            version = self._data.cancel_version
            if version == known_version:
                return version, None
            ids = frozenset(i for i, at in self._data.cancelled.items() if at > cutoff)
        return version, ids

    def close(self) -> None:
        """Nothing to release: the data stays for other stores of the same URL."""


def _claimed(job: ScheduledJob, available_at: float, now: float) -> bool:
    """Whether ``claim_due`` holds the entry: its lease ends after its due time and now."""
    return available_at > job.due_at and available_at > now
