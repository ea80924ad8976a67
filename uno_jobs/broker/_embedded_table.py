"""The SQLite side of the embedded broker: the schema, the leases, and every SQL statement.

``_embedded.py`` is the kombu glue (channel, QoS, transport, envelopes); this module is
what it stores into, and knows nothing of kombu. One table, ``broker_messages``, holds a
row per message; ``broker_queues`` remembers declared queue names. A row is *available*
while ``lease_until`` is NULL. A consumer claims rows by leasing them to its owner token
in one ``UPDATE … RETURNING`` (so two processes never claim the same row), acks by
deleting the row, hands it back by clearing the lease, and extends the leases it holds
while it lives; :meth:`MessageTable.reclaim` clears leases that ran out, so a dead
consumer's rows come back in their place in line. Nothing is ever copied or re-inserted.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from uno_jobs._sqlite_rows import insert_rows

__all__ = ["MessageTable"]

# The transport's logger: what this module logs belongs to the embedded broker.
log = logging.getLogger("uno_jobs.broker.embedded")

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS broker_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale ack cannot hit a new row
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    lease_until REAL,                      -- NULL: available; else claimed until this time
    lease_owner TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL
);
-- Rowids end every index, so (queue, NULL) is read in id order: oldest available first.
-- Expired leases (lease_until < now) are a range on the same index.
CREATE INDEX IF NOT EXISTS broker_messages_ready ON broker_messages (queue, lease_until);
CREATE TABLE IF NOT EXISTS broker_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
COMMIT;
"""

# The oldest available rows of a queue. Expired leases are first cleared by
# ``MessageTable.reclaim`` (so they keep their place in line); folding them in here as a
# second branch would make every claim several times slower.
_READY_IDS = """
    SELECT id FROM broker_messages
    WHERE queue = :queue AND lease_until IS NULL ORDER BY id LIMIT :limit
"""
_CLAIM = f"""
    UPDATE broker_messages
    SET lease_until = :until, lease_owner = :owner, deliveries = deliveries + 1
    WHERE id IN ({_READY_IDS})
    RETURNING id, payload, deliveries
"""
_TAKE = f"""
    DELETE FROM broker_messages WHERE id IN ({_READY_IDS})
    RETURNING id, payload, deliveries + 1
"""
_INSERT_ROWS = "INSERT INTO broker_messages (queue, payload, enqueued_at)"
_INSERT = f"{_INSERT_ROWS} VALUES (?, ?, ?)"
_AVAILABLE = "queue = ? AND (lease_until IS NULL OR lease_until < ?)"
_OWNED_IDS = "lease_owner = ? AND id IN (SELECT value FROM json_each(?))"

_Row = tuple[int, str, int]


def _json_ids(row_ids: Iterable[int]) -> str:
    return json.dumps(list(row_ids))


class MessageTable:
    """The SQL of the transport, on one sqlite3 connection.

    The connection belongs to one channel. A lock serialises it anyway, because kombu may
    ack from another thread and runs QoS finalizers at interpreter exit.
    """

    def __init__(self, path: str, busy_timeout: float) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: every statement commits on its own unless wrapped in an
        # explicit BEGIN IMMEDIATE, which takes the write lock up front (a deferred
        # transaction that reads first can fail with SQLITE_BUSY instead of waiting).
        self._db = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self.closed = False
        try:
            self._use_wal(busy_timeout)
            # In WAL mode NORMAL loses no committed transaction on a process crash; only an
            # OS crash or power cut may drop the last ones.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def _use_wal(self, busy_timeout: float) -> None:
        # Switching a new file to WAL while other processes open it can fail with "database
        # is locked" without SQLite's busy handler being consulted: retry until the timeout.
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        if str(mode).lower() != "wal":
            log.warning("embedded broker: SQLite refused WAL mode (journal_mode=%s)", mode)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._db.close()

    def _run(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def _rows(self, sql: str, params: Any) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def put(self, queue: str, payload: str) -> None:
        self._run(_INSERT, (queue, payload, time.time()))

    def put_many(self, rows: Sequence[tuple[str, str]]) -> None:
        """Insert ``(queue, payload)`` rows in one transaction: all of them or none (the
        commit is the confirmation), in their order (ids ascend, so consumers take them
        in it)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                insert_rows(self._db, _INSERT_ROWS, [(q, p, now) for q, p in rows], 3)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def claim(self, queue: str, owner: str, lease_seconds: float, limit: int) -> list[_Row]:
        # Leases use the wall clock: every process on the machine shares it and it goes on
        # across a reboot, where a monotonic clock would restart and strand old leases.
        until = time.time() + lease_seconds
        params = {"queue": queue, "limit": limit, "until": until, "owner": owner}
        return sorted(self._rows(_CLAIM, params))

    def take(self, queue: str, limit: int) -> list[_Row]:
        return sorted(self._rows(_TAKE, {"queue": queue, "limit": limit}))

    def reclaim(self, queue: str) -> int:
        """Make the rows of ``queue`` whose lease ran out available again."""
        sql = (
            "UPDATE broker_messages SET lease_until = NULL, lease_owner = NULL"
            " WHERE queue = ? AND lease_until < ?"
        )
        return self._run(sql, (queue, time.time())).rowcount

    def delete(self, row_id: int) -> None:
        self._run("DELETE FROM broker_messages WHERE id = ?", (row_id,))

    def release(self, row_ids: Iterable[int], owner: str) -> int:
        sql = (
            f"UPDATE broker_messages SET lease_until = NULL, lease_owner = NULL WHERE {_OWNED_IDS}"
        )
        return self._run(sql, (owner, _json_ids(row_ids))).rowcount

    def release_owner(self, owner: str) -> int:
        """Clear every lease of ``owner`` (a dead consumer's): its rows are available now."""
        sql = (
            "UPDATE broker_messages SET lease_until = NULL, lease_owner = NULL"
            " WHERE lease_owner = ?"
        )
        return self._run(sql, (owner,)).rowcount

    def extend(self, row_ids: Iterable[int], owner: str, lease_seconds: float) -> set[int]:
        sql = f"UPDATE broker_messages SET lease_until = ? WHERE {_OWNED_IDS} RETURNING id"
        rows = self._rows(sql, (time.time() + lease_seconds, owner, _json_ids(row_ids)))
        return {row[0] for row in rows}

    def count(self, queue: str, available: bool) -> int:
        where = _AVAILABLE if available else "queue = ? AND lease_until >= ?"
        sql = f"SELECT count(*) FROM broker_messages WHERE {where}"
        return int(self._rows(sql, (queue, time.time()))[0][0])

    def purge(self, queue: str) -> int:
        sql = f"DELETE FROM broker_messages WHERE {_AVAILABLE}"
        return self._run(sql, (queue, time.time())).rowcount

    def drop_queue(self, queue: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM broker_messages WHERE queue = ?", (queue,))
                self._db.execute("DELETE FROM broker_queues WHERE name = ?", (queue,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def declare_queue(self, queue: str) -> None:
        self._run("INSERT OR IGNORE INTO broker_queues (name) VALUES (?)", (queue,))

    def has_queue(self, queue: str) -> bool:
        sql = (
            "SELECT EXISTS (SELECT 1 FROM broker_queues WHERE name = ?)"
            " OR EXISTS (SELECT 1 FROM broker_messages WHERE queue = ?)"
        )
        return bool(self._rows(sql, (queue, queue))[0][0])
