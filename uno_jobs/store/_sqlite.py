"""The embedded job store (``sqlite:///abs/path/jobs.sqlite3``).

Several processes on one host share the file: it runs in WAL mode (readers never wait for
the writer) with a busy timeout, so a writer waits for another's transaction instead of
failing. Every write is one ``BEGIN IMMEDIATE`` transaction, taking the write lock up
front, because a deferred transaction that reads first and then writes can fail with
"database is locked" without waiting. sqlite3 connections must not be shared between
threads mid-transaction, so each thread gets its own.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from uno_jobs._sqlite_rows import insert_rows
from uno_jobs.errors import DuplicateJobError
from uno_jobs.store._base import (
    ATTEMPT_ERROR,
    DEFAULT_RESULT_LIMIT_BYTES,
    DEFAULT_RETENTION_SECONDS,
    FINISHED,
    MAX_ATTEMPT_ERRORS,
    RECORD_FIELDS,
    AttemptError,
    DeadLetter,
    JobRecord,
    JobStatus,
    JobUpdate,
    ScheduledJob,
    first_repeated,
    plain_record_values,
    record_columns,
    record_from_columns,
    update_columns,
)

__all__ = ["SQLiteStore"]

BUSY_TIMEOUT_SECONDS = 10.0
# Every statement of the schema is "IF NOT EXISTS": a file of an older version is brought
# up to date by running all of them again (version 2 added the job_errors table, version 3
# the cancelled and counters tables).
SCHEMA_VERSION = 3
# Stay well below SQLite's limit on bound parameters in one statement.
_CHUNK = 500
_FINISHED_VALUES = frozenset(status.value for status in FINISHED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL DEFAULT 'normal',
    attempts INTEGER NOT NULL DEFAULT 0,
    worker_lost INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL,
    started_at REAL,
    finished_at REAL,
    worker_id TEXT,
    result TEXT,
    result_truncated INTEGER NOT NULL DEFAULT 0,
    error_type TEXT,
    error_message TEXT,
    error_traceback TEXT,
    dead_reason TEXT,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_expires_at ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    reason TEXT NOT NULL,
    error TEXT,
    dead_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters (queue, dead_at);
CREATE INDEX IF NOT EXISTS dead_letters_dead_at ON dead_letters (dead_at);
CREATE TABLE IF NOT EXISTS scheduled (
    job_id TEXT PRIMARY KEY,
    routing_key TEXT NOT NULL,
    due_at REAL NOT NULL,
    payload TEXT NOT NULL,
    available_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scheduled_available_at ON scheduled (available_at);
CREATE TABLE IF NOT EXISTS job_errors (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error_type TEXT NOT NULL,
    error_message TEXT NOT NULL,
    failed_at REAL NOT NULL,
    worker_id TEXT
);
CREATE INDEX IF NOT EXISTS job_errors_job ON job_errors (job_id, seq);
CREATE TABLE IF NOT EXISTS cancelled (
    job_id TEXT PRIMARY KEY,
    cancelled_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cancelled_at ON cancelled (cancelled_at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_SELECT_RECORD = f"SELECT {', '.join(RECORD_FIELDS)} FROM jobs"
# Positional parameters (a row as a tuple in _ROW_COLUMNS order): binding by name costs
# a third more per row of a batch.
_ROW_COLUMNS = (*RECORD_FIELDS, "expires_at")
# Without their VALUES, for insert_rows: many rows per statement.
_INSERT_RECORDS = f"INSERT INTO jobs ({', '.join(_ROW_COLUMNS)})"
_INSERT_MISSING_RECORDS = _INSERT_RECORDS.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)
_INSERT_MISSING = f"{_INSERT_MISSING_RECORDS} VALUES ({', '.join('?' * len(_ROW_COLUMNS))})"
_WIDTH = len(_ROW_COLUMNS)
_ID, _ENQUEUED_AT = _ROW_COLUMNS.index("id"), _ROW_COLUMNS.index("enqueued_at")
_STATUS = _ROW_COLUMNS.index("status")
_SET_ENQUEUED_AT = "UPDATE jobs SET enqueued_at = ? WHERE id = ? AND enqueued_at IS NULL"
_CLAIM_DUE = """
UPDATE scheduled SET available_at = ?
WHERE job_id IN (
    SELECT job_id FROM scheduled WHERE available_at <= ? ORDER BY available_at LIMIT ?
)
RETURNING job_id, routing_key, due_at, payload
"""
_UNSCHEDULE = """
DELETE FROM scheduled
WHERE job_id = ? AND NOT (available_at > due_at AND available_at > ?)
RETURNING job_id, routing_key, due_at, payload
"""
_BUMP_CANCEL_VERSION = (
    "INSERT INTO counters (name, value) VALUES ('cancelled', 1) "
    "ON CONFLICT (name) DO UPDATE SET value = value + 1"
)
_INSERT_ERROR = (
    "INSERT INTO job_errors (job_id, attempt, error_type, error_message, failed_at, worker_id) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# Keeps the newest MAX_ATTEMPT_ERRORS of a job (the subquery is NULL while there are fewer).
_TRIM_ERRORS = f"""
DELETE FROM job_errors WHERE job_id = ? AND seq <= (
    SELECT seq FROM job_errors WHERE job_id = ?
    ORDER BY seq DESC LIMIT 1 OFFSET {MAX_ATTEMPT_ERRORS}
)
"""
# Whether any record is past its expiry (the partial index on expires_at answers it).
_ANY_EXPIRED = "SELECT 1 FROM jobs WHERE expires_at <= ? LIMIT 1"
_SELECT_ERRORS = (
    "SELECT attempt, error_type, error_message, failed_at, worker_id FROM job_errors "
    "WHERE job_id = ? ORDER BY seq"
)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL, waiting while another connection holds it.

    Two connections opening a fresh database at once can get "database is locked" from
    the journal-mode switch without SQLite's busy handler being called, so the wait is
    done here, up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class _Connections:
    """One sqlite3 connection per thread (and per process, after a fork)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._generation = 0
        self._schema_ready = False
        self._open: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        # Connections inherited over a fork belong to the parent: never close them here.
        self._inherited: list[sqlite3.Connection] = []

    def get(self) -> sqlite3.Connection:
        held: tuple[int, int, sqlite3.Connection] | None = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid() and held[1] == self._generation:
            return held[2]
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        with self._lock:
            if self._pid != os.getpid():
                self._inherited.extend(conn for _, conn in self._open)
                self._open = []
                self._pid = os.getpid()
                self._schema_ready = False
            self._close_dead_threads()
            conn = self._new_connection()
            self._open.append((weakref.ref(threading.current_thread()), conn))
            self._local.held = (self._pid, self._generation, conn)
            return conn

    def _new_connection(self) -> sqlite3.Connection:
        if not self._schema_ready:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._path,
            timeout=BUSY_TIMEOUT_SECONDS,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            _use_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            if not self._schema_ready:
                _create_schema(conn)
                self._schema_ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _close_dead_threads(self) -> None:
        alive = []
        for thread_ref, conn in self._open:
            thread = thread_ref()
            if thread is not None and thread.is_alive():
                alive.append((thread_ref, conn))
            else:
                conn.close()
        self._open = alive

    def close_all(self) -> None:
        with self._lock:
            for _, conn in self._open:
                if self._pid == os.getpid():
                    conn.close()
                else:
                    self._inherited.append(conn)
            self._open = []
            self._generation += 1


def _create_schema(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _error_row(job_id: str, error: AttemptError) -> tuple[Any, ...]:
    return (
        job_id,
        error.attempt,
        error.error_type,
        error.error_message,
        error.failed_at,
        error.worker_id,
    )


@functools.lru_cache(maxsize=256)
def _upsert_sql(names: tuple[str, ...]) -> str:
    """The statement that creates-or-updates a record, writing the columns ``names``."""
    changed = list(names)
    if "status" in names:
        changed.append("expires_at")
    inserted = ["id", "task", "queue", "status"]
    inserted += [name for name in changed if name not in inserted]
    sql = (
        f"INSERT INTO jobs ({', '.join(inserted)}) "
        f"VALUES ({', '.join(':' + name for name in inserted)}) ON CONFLICT (id) DO "
    )
    if not changed:
        return sql + "NOTHING"
    return sql + "UPDATE SET " + ", ".join(f"{name} = excluded.{name}" for name in changed)


class SQLiteStore:
    """A ``JobStore`` in one SQLite file, shared by the processes of one host.

    Args:
        path: The database file; its folder and the schema are created on first use.
        url: The URL the store was opened with (shown redacted in its repr).
        retention_seconds: How long finished records and dead letters are kept.
        result_limit_bytes: The largest JSON-encoded result that is stored.
    """

    #: Reads are local: in WAL mode a reader never waits for a writer (see ``JobStore``).
    local_reads = True

    def __init__(
        self,
        path: str | Path,
        *,
        url: str | None = None,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        result_limit_bytes: int = DEFAULT_RESULT_LIMIT_BYTES,
    ) -> None:
        self.path = Path(path)
        self.url = url or f"sqlite://{self.path}"
        self.retention_seconds = retention_seconds
        self.result_limit_bytes = result_limit_bytes
        self._connections = _Connections(self.path)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connections.get()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _expiry(self, status: str, now: float) -> float | None:
        return now + self.retention_seconds if status in _FINISHED_VALUES else None

    @staticmethod
    def _drop_expired(conn: sqlite3.Connection, job_ids: Sequence[str], now: float) -> None:
        """Delete expired rows among ``job_ids``: for the store they no longer exist."""
        # Usually no row at all has expired (``purge_expired`` runs on a schedule): one
        # step into the expiry index says so, where the lookup by id costs a statement
        # prepared for this batch's length and a probe per id.
        if conn.execute(_ANY_EXPIRED, (now,)).fetchone() is None:
            return
        for chunk in _chunks(job_ids):
            # Found first (rarely any): the deletes then name their rows.
            expired = [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM jobs WHERE expires_at <= ? "
                    f"AND id IN ({_placeholders(len(chunk))})",
                    (now, *chunk),
                )
            ]
            if expired:
                marks = _placeholders(len(expired))
                conn.execute(f"DELETE FROM job_errors WHERE job_id IN ({marks})", expired)
                conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", expired)

    def create(self, record: JobRecord) -> None:
        """Insert a new record. Raises ``DuplicateJobError`` if the id exists."""
        self.create_many([record])

    def create_many(self, records: Sequence[JobRecord]) -> None:
        """Insert many new records in one transaction; all or nothing.

        Raises:
            DuplicateJobError: The first id that exists (or repeats); nothing is written.
        """
        ids = [record.id for record in records]
        repeated = first_repeated(ids)
        if repeated is not None:
            raise DuplicateJobError(repeated)
        now = time.time()
        rows, errors = self._rows(records, now)
        try:
            with self._transaction() as conn:
                self._drop_expired(conn, ids, now)
                insert_rows(conn, _INSERT_RECORDS, rows, _WIDTH)
                self._delete_errors(conn, ids)
                conn.executemany(_INSERT_ERROR, errors)
        except sqlite3.IntegrityError:
            # Rolled back; only now can we tell which ids exist, as the rows that
            # executemany wrote before the conflict are gone again.
            existing = self._existing(ids, now)
            for job_id in ids:
                if job_id in existing:
                    raise DuplicateJobError(job_id) from None
            raise

    def create_missing(self, records: Sequence[JobRecord]) -> None:
        """Insert the records whose id has none yet, in one transaction; an existing
        record (a worker that started the job first) is left as it is, but for an
        enqueue time it lacks."""
        ids = [record.id for record in records]
        now = time.time()
        rows, errors = self._rows(records, now)
        # New ids, the usual case: an insert that adds every row is all there is to do
        # (no row of these ids existed, expired or not). One record goes without an
        # explicit transaction: one statement is one transaction. A short count goes on
        # below, which leaves the rows just added as they are.
        if not errors and len(rows) == 1:
            conn = self._connections.get()
            if conn.execute(_INSERT_MISSING, rows[0]).rowcount == 1:
                return
        with self._transaction() as conn:
            many = not errors and len(rows) > 1
            if many and insert_rows(conn, _INSERT_MISSING_RECORDS, rows, _WIDTH) == len(rows):
                return
            self._drop_expired(conn, ids, now)
            # A record a worker made lacks the enqueue time: the one field filled in.
            conn.executemany(
                _SET_ENQUEUED_AT,
                [(r[_ENQUEUED_AT], r[_ID]) for r in rows if r[_ENQUEUED_AT] is not None],
            )
            if not errors:  # new jobs, the usual case: nothing to tell apart
                insert_rows(conn, _INSERT_MISSING_RECORDS, rows, _WIDTH)
                return
            inserted = {row[_ID] for row in rows if conn.execute(_INSERT_MISSING, row).rowcount}
            conn.executemany(_INSERT_ERROR, [e for e in errors if e[0] in inserted])

    def _rows(
        self, records: Sequence[JobRecord], now: float
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The ``jobs`` rows (tuples in ``_ROW_COLUMNS`` order) and ``job_errors`` rows of
        new records."""
        rows = []
        errors: list[tuple[Any, ...]] = []
        for record in records:
            values = plain_record_values(record)
            if values is not None:
                values.append(self._expiry(values[_STATUS], now))
                rows.append(tuple(values))
                continue
            row = record_columns(record, self.result_limit_bytes)
            row["expires_at"] = self._expiry(row["status"], now)
            errors += [_error_row(record.id, AttemptError.from_value(e)) for e in row.pop("errors")]
            rows.append(tuple(row[name] for name in _ROW_COLUMNS))
        return rows, errors

    def _existing(self, job_ids: Sequence[str], now: float) -> set[str]:
        conn = self._connections.get()
        found: set[str] = set()
        for chunk in _chunks(job_ids):
            sql = (
                f"SELECT id FROM jobs WHERE id IN ({_placeholders(len(chunk))}) "
                "AND (expires_at IS NULL OR expires_at > ?)"
            )
            found.update(row[0] for row in conn.execute(sql, (*chunk, now)))
        return found

    def delete(self, job_ids: Iterable[str]) -> None:
        """Remove records (used to undo ``create`` when a publish failed)."""
        ids = list(job_ids)
        with self._transaction() as conn:
            for chunk in _chunks(ids):
                conn.execute(f"DELETE FROM jobs WHERE id IN ({_placeholders(len(chunk))})", chunk)
            self._delete_errors(conn, ids)

    @staticmethod
    def _delete_errors(conn: sqlite3.Connection, job_ids: Sequence[str]) -> None:
        for chunk in _chunks(job_ids):
            conn.execute(
                f"DELETE FROM job_errors WHERE job_id IN ({_placeholders(len(chunk))})", chunk
            )

    def get(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id``, or ``None`` if there is none or it expired."""
        sql = f"{_SELECT_RECORD} WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)"
        conn = self._connections.get()
        # One read transaction: the record and its errors from the same snapshot.
        conn.execute("BEGIN")
        try:
            row = conn.execute(sql, (job_id, time.time())).fetchone()
            errors = conn.execute(_SELECT_ERRORS, (job_id,)).fetchall() if row else []
        finally:
            conn.execute("COMMIT")
        if row is None:
            return None
        columns: dict[str, Any] = dict(zip(RECORD_FIELDS, row, strict=True))
        columns["errors"] = [AttemptError(*error) for error in errors]
        return record_from_columns(columns)

    def apply(self, updates: Sequence[JobUpdate]) -> None:
        """Apply updates in order, in one transaction (see ``JobStore.apply``).

        A finished status sets the expiry, any other status clears it. Results that are
        too large or not JSON are stored as ``None`` with ``result_truncated=True``.

        Raises:
            ValueError: An update names an unknown field or status; nothing is applied.
        """
        now = time.time()
        prepared: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        errors: list[tuple[Any, ...]] = []
        for update in updates:
            columns = update_columns(update, self.result_limit_bytes)
            error = columns.pop(ATTEMPT_ERROR, None)
            if error is not None:
                errors.append(_error_row(update.job_id, error))
            params = {
                "id": update.job_id,
                "task": update.task,
                "queue": update.queue,
                "status": JobStatus.QUEUED.value,
                **columns,
            }
            if "status" in columns:
                params["expires_at"] = self._expiry(columns["status"], now)
            prepared.append((tuple(sorted(columns)), params))
        if not prepared:
            return
        with self._transaction() as conn:
            self._drop_expired(conn, list({update.job_id: None for update in updates}), now)
            # Consecutive updates that write the same columns share one executemany.
            for names, group in itertools.groupby(prepared, key=operator.itemgetter(0)):
                conn.executemany(_upsert_sql(names), [params for _, params in group])
            if errors:
                conn.executemany(_INSERT_ERROR, errors)
                trimmed = {error[0]: None for error in errors}
                conn.executemany(_TRIM_ERRORS, [(job_id, job_id) for job_id in trimmed])

    def add_dead_letter(self, entry: DeadLetter) -> None:
        """Index a dead-lettered job under its queue."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO dead_letters (job_id, task, queue, reason, error, dead_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (entry.job_id, entry.task, entry.queue, entry.reason, entry.error, entry.dead_at),
            )

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of ``queue`` (or of every queue), newest first."""
        sql = "SELECT job_id, task, queue, reason, error, dead_at FROM dead_letters"
        params: tuple[Any, ...] = (max(limit, 0),)
        if queue is not None:
            sql += " WHERE queue = ?"
            params = (queue, *params)
        sql += " ORDER BY dead_at DESC, seq DESC LIMIT ?"
        rows = self._connections.get().execute(sql, params).fetchall()
        return [DeadLetter(*row) for row in rows]

    def schedule(self, job: ScheduledJob) -> None:
        """Keep a message until ``due_at`` (replaces an entry with the same job id)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO scheduled "
                "(job_id, routing_key, due_at, payload, available_at) VALUES (?, ?, ?, ?, ?)",
                (job.job_id, job.routing_key, job.due_at, job.payload, job.due_at),
            )

    def claim_due(self, now: float, limit: int, lease_seconds: float) -> list[ScheduledJob]:
        """Claim up to ``limit`` due entries for ``lease_seconds`` (see ``JobStore``).

        One ``UPDATE … RETURNING`` statement moves the entries' claimable time to the end
        of the lease and returns them, so two processes can never claim the same entry.
        """
        if limit <= 0:
            return []
        conn = self._connections.get()
        rows = conn.execute(_CLAIM_DUE, (now + lease_seconds, now, limit)).fetchall()
        claimed = [ScheduledJob(*row) for row in rows]
        claimed.sort(key=lambda job: job.due_at)
        return claimed

    def release_scheduled(self, job_ids: Sequence[str]) -> None:
        """Remove entries after they were published."""
        with self._transaction() as conn:
            for chunk in _chunks(job_ids):
                conn.execute(
                    f"DELETE FROM scheduled WHERE job_id IN ({_placeholders(len(chunk))})", chunk
                )

    def scheduled_count(self) -> int:
        """How many entries are waiting (claimed ones included)."""
        row = self._connections.get().execute("SELECT COUNT(*) FROM scheduled").fetchone()
        return int(row[0])

    def purge_expired(self, now: float) -> int:
        """Delete finished records, dead letters and cancellations past retention.

        Returns how many were deleted.
        """
        with self._transaction() as conn:
            cancellations = conn.execute(
                "DELETE FROM cancelled WHERE cancelled_at <= ?", (now - self.retention_seconds,)
            ).rowcount
            conn.execute(
                "DELETE FROM job_errors WHERE job_id IN "
                "(SELECT id FROM jobs WHERE expires_at <= ?)",
                (now,),
            )
            records = conn.execute("DELETE FROM jobs WHERE expires_at <= ?", (now,)).rowcount
            letters = conn.execute(
                "DELETE FROM dead_letters WHERE dead_at <= ?", (now - self.retention_seconds,)
            ).rowcount
        return records + letters + cancellations

    def remove_dead_letters(self, queue: str, job_ids: Iterable[str] | None = None) -> int:
        """Remove the dead letters of ``job_ids`` in ``queue`` (all when ``None``)."""
        with self._transaction() as conn:
            if job_ids is None:
                sql = "DELETE FROM dead_letters WHERE queue = ?"
                return int(conn.execute(sql, (queue,)).rowcount)
            removed = 0
            for chunk in _chunks(list(job_ids)):
                sql = (
                    "DELETE FROM dead_letters WHERE queue = ? "
                    f"AND job_id IN ({_placeholders(len(chunk))})"
                )
                removed += conn.execute(sql, (queue, *chunk)).rowcount
            return removed

    def unschedule(self, job_id: str, now: float) -> ScheduledJob | None:
        """Remove and return the entry of ``job_id`` unless a mover holds it claimed.

        A claimed entry's claimable time is the end of its lease, past its due time.
        """
        with self._transaction() as conn:
            row = conn.execute(_UNSCHEDULE, (job_id, now)).fetchone()
        return None if row is None else ScheduledJob(*row)

    def cancel(self, job_id: str, cancelled_at: float) -> None:
        """Add ``job_id`` to the cancelled ids and move their version on, in one transaction."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO cancelled (job_id, cancelled_at) VALUES (?, ?)",
                (job_id, cancelled_at),
            )
            conn.execute(_BUMP_CANCEL_VERSION)

    def uncancel(self, job_ids: Iterable[str]) -> None:
        """Remove ids from the cancelled ids (moving the version on if any was there)."""
        ids = list(job_ids)
        if not ids:
            return
        with self._transaction() as conn:
            removed = 0
            for chunk in _chunks(ids):
                sql = f"DELETE FROM cancelled WHERE job_id IN ({_placeholders(len(chunk))})"
                removed += conn.execute(sql, chunk).rowcount
            if removed:
                conn.execute(_BUMP_CANCEL_VERSION)

    def cancellations(self, known_version: int | None) -> tuple[int, frozenset[str] | None]:
        """The version of the cancelled ids, and the ids unless that is ``known_version``.

        The version is read first: ids read after it are never older than it.
        """
        conn = self._connections.get()
        row = conn.execute("SELECT value FROM counters WHERE name = 'cancelled'").fetchone()
        version = 0 if row is None else int(row[0])
        if version == known_version:
            return version, None
        cutoff = time.time() - self.retention_seconds
        rows = conn.execute("SELECT job_id FROM cancelled WHERE cancelled_at > ?", (cutoff,))
        return version, frozenset(job_id for (job_id,) in rows)

    def close(self) -> None:
        """Close every thread's connection; a later call opens new ones."""
        self._connections.close_all()
