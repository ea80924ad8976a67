"""The job store contract: records, status values and the ``JobStore`` protocol.

Stores are synchronous and thread-safe; async callers go through ``asyncio.to_thread``.
Workers never write one row at a time on the hot path: they hand ``JobUpdate`` batches to
``apply``, which a store applies in one transaction or pipeline, in order.

Each failed attempt is kept in the record's ``errors`` (an ``AttemptError`` per attempt,
the last ``MAX_ATTEMPT_ERRORS``), appended by an update's ``attempt_error`` field and
expiring with the record.
"""

from __future__ import annotations

import enum
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_RESULT_LIMIT_BYTES",
    "DEFAULT_RETENTION_SECONDS",
    "FINISHED",
    "MAX_ATTEMPT_ERRORS",
    "AttemptError",
    "DeadLetter",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "JobUpdate",
    "ScheduledJob",
]

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
DEFAULT_RESULT_LIMIT_BYTES = 1024 * 1024
#: How many failed attempts a record keeps in ``errors`` (the most recent ones).
MAX_ATTEMPT_ERRORS = 50


class JobStatus(str, enum.Enum):
    """Where a job is in its life (DESIGN.md §1)."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD})


@dataclass(frozen=True)
class AttemptError:
    """One failed attempt of a job, as kept in ``JobRecord.errors``.

    Attributes:
        attempt: The attempt that failed (1 for the first run).
        error_type: The exception's class name (``JobTimeLimitExceeded`` for a time limit).
        error_message: The exception's message.
        failed_at: When the attempt failed (POSIX timestamp).
        worker_id: The worker that ran it.
    """

    attempt: int
    error_type: str
    error_message: str
    failed_at: float
    worker_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "failed_at": self.failed_at,
            "worker_id": self.worker_id,
        }

    @classmethod
    def from_value(cls, value: AttemptError | Mapping[str, Any]) -> AttemptError:
        """An ``AttemptError`` from itself or from its ``to_dict`` form.

        Raises:
            ValueError: A mapping that lacks a field or has one of the wrong type.
        """
        if isinstance(value, AttemptError):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"an attempt error must be a mapping, not {type(value).__name__}")
        try:
            worker_id = value.get("worker_id")
            return cls(
                attempt=int(value["attempt"]),
                error_type=str(value["error_type"]),
                error_message=str(value["error_message"]),
                failed_at=float(value["failed_at"]),
                worker_id=None if worker_id is None else str(worker_id),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad attempt error {dict(value)!r}: {exc!r}") from exc


@dataclass(frozen=True)
class JobRecord:
    """Everything the store knows about one job.

    Times are POSIX timestamps (float seconds). ``result`` is the JSON value the task
    returned (``None`` until it succeeded); a result larger than the store's cap is
    replaced by ``None`` with ``result_truncated`` set. ``errors`` holds the failed
    attempts, oldest first (the last ``MAX_ATTEMPT_ERRORS`` of them); ``error_type`` and
    ``error_message`` repeat the latest.
    """

    id: str
    task: str
    queue: str
    status: JobStatus
    priority: str = "normal"
    attempts: int = 0
    worker_lost: int = 0
    enqueued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    result: Any = None
    result_truncated: bool = False
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    dead_reason: str | None = None
    errors: tuple[AttemptError, ...] = ()

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "status": self.status.value,
            "priority": self.priority,
            "attempts": self.attempts,
            "worker_lost": self.worker_lost,
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker_id": self.worker_id,
            "result": self.result,
            "result_truncated": self.result_truncated,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "error_traceback": self.error_traceback,
            "dead_reason": self.dead_reason,
            "errors": [error.to_dict() for error in self.errors],
        }

    def evolve(self, **changes: Any) -> JobRecord:
        return replace(self, **changes)


@dataclass(frozen=True)
class JobUpdate:
    """A change to one job's record, applied by ``JobStore.apply``.

    Only the fields that are not ``None`` are written (``fields`` holds them). If no record
    exists for ``job_id`` (a job sent by a Celery producer, say), ``apply`` creates one
    from ``task``/``queue`` and the fields. The field ``attempt_error`` (an
    ``AttemptError``) is not stored as such: it is appended to the record's ``errors``.
    """

    job_id: str
    task: str
    queue: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a queue's dead-letter index."""

    job_id: str
    task: str
    queue: str
    reason: str
    error: str | None
    dead_at: float


@dataclass(frozen=True)
class ScheduledJob:
    """A message waiting for its time (a delayed job or a retry), published when due.

    ``routing_key`` is the broker queue to publish to (``q``, ``q.high``, ...); ``payload``
    is the encoded message as the broker layer wants it back (opaque to the store).
    """

    job_id: str
    routing_key: str
    due_at: float
    payload: str


class PushRefusedError(Exception):
    """``create_and_push``: a broker list to push to is another type of key in Redis."""

    def __init__(self, key: str, kind: str) -> None:
        super().__init__(f"WRONGTYPE: key {key!r} holds a {kind}, not a list")
        self.key = key
        self.kind = kind


@runtime_checkable
class JobStore(Protocol):
    """Job state and results. Implementations: SQLite (embedded), Redis, memory.

    Optional: a class attribute ``local_reads = True`` says a read is a short local
    operation (no network), which workers may then do on their event loop instead of in
    a thread (``CancelWatch``: it saves a thread hop before a lone delivery starts).
    A networked store may offer ``cancellations_quick(known_version)`` instead:
    ``cancellations`` bounded to a fraction of a second, returning ``None`` when it
    could not answer in that time (the Redis store: 0.25 s). Stores with neither are read
    in a thread.

    Optional too, and used by ``Queue`` when present (every store here has them):

    - ``create_missing(records)``: insert the records whose id has no live record and
      leave existing ones as they are. With it, ``Queue`` writes a RabbitMQ job's record
      while the broker confirms its message instead of before publishing it; a worker
      that starts the job first creates the record itself (``apply``), and this write
      must then not refuse or overwrite it.
    - ``create_and_push(records, commands)`` and ``same_database(broker_url)``: a Redis
      store writes the records and runs a Redis broker's publish commands in one atomic
      script when the broker is its own server and database.
    """

    url: str
    retention_seconds: float
    result_limit_bytes: int

    def create(self, record: JobRecord) -> None:
        """Insert a new record. Raises ``DuplicateJobError`` if the id exists."""
        ...

    def create_many(self, records: Sequence[JobRecord]) -> None:
        """Insert many new records at once; all or nothing.

        Raises ``DuplicateJobError`` naming the first id that exists (nothing is written).
        """
        ...

    def delete(self, job_ids: Iterable[str]) -> None:
        """Remove records (used to undo ``create`` when a publish failed)."""
        ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def apply(self, updates: Sequence[JobUpdate]) -> None:
        """Apply updates in order, in one transaction or pipeline.

        A status that is in ``FINISHED`` also sets the record's expiry to
        ``retention_seconds`` from now; a ``result`` whose JSON encoding is larger than
        ``result_limit_bytes`` (or that is not strict JSON at all) is stored as ``None``
        with ``result_truncated=True``.
        ``attempts`` and ``worker_lost`` are absolute values, not increments. An
        ``attempt_error`` field is appended to the record's ``errors``, of which the last
        ``MAX_ATTEMPT_ERRORS`` are kept; they expire (and are deleted) with the record.
        """
        ...

    def add_dead_letter(self, entry: DeadLetter) -> None: ...

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Newest first."""
        ...

    def schedule(self, job: ScheduledJob) -> None:
        """Keep a message until ``due_at`` (replaces an entry with the same job id)."""
        ...

    def claim_due(self, now: float, limit: int, lease_seconds: float) -> list[ScheduledJob]:
        """Atomically claim up to ``limit`` due entries for ``lease_seconds``.

        Any number of workers may call this at once: each due entry is returned to one
        caller only, until its lease runs out. The caller publishes it and then calls
        ``release_scheduled``; an entry whose claimer died becomes due again when the
        lease ends (so it is published at least once, and once in the normal case).
        """
        ...

    def release_scheduled(self, job_ids: Sequence[str]) -> None:
        """Remove entries after they were published."""
        ...

    def scheduled_count(self) -> int: ...

    def purge_expired(self, now: float) -> int:
        """Delete finished records, dead-letter entries and cancellations past retention.

        Returns how many were deleted.
        """
        ...

    def remove_dead_letters(self, queue: str, job_ids: Iterable[str] | None = None) -> int:
        """Remove the dead-letter entries of ``job_ids`` in ``queue`` (all when ``None``).

        Returns how many entries were removed.
        """
        ...

    def unschedule(self, job_id: str, now: float) -> ScheduledJob | None:
        """Remove and return the schedule entry of ``job_id``, unless a mover claimed it.

        An entry claimed by ``claim_due`` whose lease has not run out is being published:
        it is left alone and ``None`` is returned, as for a job id with no entry.
        """
        ...

    def cancel(self, job_id: str, cancelled_at: float) -> None:
        """Add ``job_id`` to the cancelled ids and move their version on, atomically.

        An id stays cancelled until ``uncancel`` or until ``retention_seconds`` after
        ``cancelled_at``.
        """
        ...

    def uncancel(self, job_ids: Iterable[str]) -> None:
        """Remove ids from the cancelled ids (moving the version on if any was there)."""
        ...

    def cancellations(self, known_version: int | None) -> tuple[int, frozenset[str] | None]:
        """The version of the cancelled ids, and the ids unless that is ``known_version``.

        One round trip. Workers call it with the version they hold and get ``None`` back
        while nothing changed; the version is read before the ids, so ids returned are
        never older than the version returned with them.
        """
        ...

    def close(self) -> None: ...


# Helpers shared by the store implementations. They are not exported: every store keeps a
# record in the same "stored form" (the columns below, with ``status`` as its string value
# and ``result`` as JSON text), so all of them truncate, coerce and round-trip alike.

#: The fields a store keeps as columns of the record; ``errors`` is kept apart by each store.
RECORD_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclass_fields(JobRecord) if f.name != "errors"
)
_record_values: Callable[[JobRecord], tuple[Any, ...]] = operator.attrgetter(*RECORD_FIELDS)
_STATUS_AT = RECORD_FIELDS.index("status")
_TRUNCATED_AT = RECORD_FIELDS.index("result_truncated")
#: The key of ``JobUpdate.fields`` that appends to ``errors``.
ATTEMPT_ERROR = "attempt_error"
_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclass_fields(JobRecord) if f.default is not MISSING
}


def new_record(
    job_id: str, task: str, queue: str, priority: str, status: JobStatus, enqueued_at: float
) -> JobRecord:
    """``JobRecord(id=job_id, task=task, queue=queue, priority=priority, status=status,
    enqueued_at=enqueued_at)``, the record an enqueue writes, for a fraction of the cost:
    the frozen dataclass's ``__init__`` sets its 18 fields one ``object.__setattr__`` at a
    time (1.6 µs a record, once per job enqueued); this fills the instance's dict in one
    step from the defaults. The arguments are not checked: the caller built them."""
    record = object.__new__(JobRecord)
    fields = record.__dict__
    fields.update(_DEFAULTS)
    fields["id"] = job_id
    fields["task"] = task
    fields["queue"] = queue
    fields["priority"] = priority
    fields["status"] = status
    fields["enqueued_at"] = enqueued_at
    return record


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _status_value(value: Any) -> str:
    if isinstance(value, JobStatus):
        return value.value
    return JobStatus(value).value


_COERCE: dict[str, Callable[[Any], Any]] = {
    "task": str,
    "queue": str,
    "status": _status_value,
    "priority": str,
    "attempts": int,
    "worker_lost": int,
    "enqueued_at": _optional(float),
    "started_at": _optional(float),
    "finished_at": _optional(float),
    "worker_id": _optional(str),
    "result_truncated": bool,
    "error_type": _optional(str),
    "error_message": _optional(str),
    "error_traceback": _optional(str),
    "dead_reason": _optional(str),
}


def encode_result(value: Any, limit_bytes: int) -> tuple[str | None, bool]:
    """The stored form of a task result: ``(json_text, truncated)``.

    ``None`` is stored as ``(None, False)``. A result whose compact JSON encoding is larger
    than ``limit_bytes`` (UTF-8), or that is not strict JSON at all (an object JSON cannot
    encode, NaN, infinity), is stored as ``(None, True)``: recording the outcome of a job
    must not fail because of what the task returned.
    """
    if value is None:
        return None, False
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None, True
    # A str is at most 4 UTF-8 bytes per character, so most results skip the encode.
    if len(text) * 4 > limit_bytes and len(text.encode("utf-8")) > limit_bytes:
        return None, True
    return text, False


def decode_result(text: str | None) -> Any:
    """The inverse of ``encode_result``."""
    return None if text is None else json.loads(text)


def plain_record_values(record: JobRecord) -> list[Any] | None:
    """A record's stored form as values in ``RECORD_FIELDS`` order, when it has no result
    and no errors to encode (a new job's, the usual case on enqueue): what
    ``record_columns`` gives for it, read off the record at once without the dict.
    ``None`` for any other record (``record_columns`` then)."""
    if record.result is not None or record.errors:
        return None
    values = list(_record_values(record))
    values[_STATUS_AT] = record.status.value
    values[_TRUNCATED_AT] = bool(record.result_truncated)
    return values


def record_columns(record: JobRecord, limit_bytes: int) -> dict[str, Any]:
    """Every field of ``record`` in stored form (the result encoded and capped).

    ``errors`` is there as a list of ``AttemptError.to_dict()`` mappings, the last
    ``MAX_ATTEMPT_ERRORS`` only; stores that keep it apart pop it.
    """
    columns = record.to_dict()
    text, truncated = encode_result(record.result, limit_bytes)
    columns["result"] = text
    columns["result_truncated"] = bool(record.result_truncated or truncated)
    columns["errors"] = columns["errors"][-MAX_ATTEMPT_ERRORS:]
    return columns


def update_columns(update: JobUpdate, limit_bytes: int) -> dict[str, Any]:
    """The fields of ``update`` in stored form, coerced to their field types.

    Raises:
        ValueError: A key that is not a writable ``JobRecord`` field, or a status value
            that is not a ``JobStatus``. Stores call this for a whole batch before they
            write anything, so a bad update leaves the batch unapplied.
    """
    columns: dict[str, Any] = {}
    for name, value in update.fields.items():
        if name == "result":
            text, truncated = encode_result(value, limit_bytes)
            columns["result"] = text
            columns["result_truncated"] = truncated or bool(update.fields.get("result_truncated"))
            continue
        if name == "result_truncated" and "result" in update.fields:
            continue
        if name == ATTEMPT_ERROR:
            if value is not None:
                try:
                    columns[name] = AttemptError.from_value(value)
                except ValueError as exc:
                    raise ValueError(f"job {update.job_id}: {exc}") from exc
            continue
        coerce = _COERCE.get(name)
        if coerce is None:
            raise ValueError(f"job {update.job_id}: {name!r} is not a writable job field")
        try:
            columns[name] = coerce(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"job {update.job_id}: bad value for {name!r}: {exc}") from exc
    return columns


def record_from_columns(columns: Mapping[str, Any]) -> JobRecord:
    """A ``JobRecord`` from stored form; missing columns take the field defaults.

    ``errors``, when present, is a sequence of ``AttemptError`` or their mappings.
    """
    values = {name: columns.get(name, _DEFAULTS.get(name)) for name in RECORD_FIELDS}
    values["status"] = JobStatus(values["status"] or JobStatus.QUEUED)
    values["result"] = decode_result(values["result"])
    values["result_truncated"] = bool(values["result_truncated"])
    errors = columns.get("errors") or ()
    values["errors"] = tuple(AttemptError.from_value(error) for error in errors)
    return JobRecord(**values)


def first_repeated(ids: Iterable[str]) -> str | None:
    """The first id that occurs a second time in ``ids``, if any."""
    seen: set[str] = set()
    for job_id in ids:
        if job_id in seen:
            return job_id
        seen.add(job_id)
    return None
