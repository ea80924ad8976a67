"""The memory and SQLite job stores, and ``open_store``'s handling of URLs."""

from __future__ import annotations

import multiprocessing
import sqlite3
import sys
import time
import uuid
from multiprocessing.queues import Queue as ProcessQueue
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path

import pytest

# The contract lives beside the test folders so the Redis suite can use it too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cancel_contract import CancellationContract
from store_contract import NOW, StoreContract, a_record
from store_history_contract import HistoryContract, failed_attempt

from uno_jobs.errors import ConfigurationError
from uno_jobs.store import JobStore, ScheduledJob, open_store


class TestMemoryStore(StoreContract, CancellationContract, HistoryContract):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex}"


class TestSQLiteStore(StoreContract, CancellationContract, HistoryContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path / 'jobs.sqlite3'}"


# -- memory ---------------------------------------------------------------------------------


def test_memory_stores_share_data_by_url() -> None:
    name = f"memory://shared-{uuid.uuid4().hex}"
    first, second, other = open_store(name), open_store(name), open_store(name + "-other")
    first.create(a_record("a"))
    assert second.get("a") == a_record("a")
    assert other.get("a") is None


# -- SQLite ---------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'nested' / 'folder' / 'jobs.sqlite3'}"


def test_sqlite_creates_folders_and_schema_in_wal_mode(sqlite_url: str, tmp_path: Path) -> None:
    store = open_store(sqlite_url)
    path = tmp_path / "nested" / "folder" / "jobs.sqlite3"
    assert not path.exists()  # nothing happens before first use
    store.create(a_record("a"))
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT id, status FROM jobs").fetchall() == [("a", "queued")]
    conn.close()
    reopened = open_store(sqlite_url)
    assert reopened.get("a") == a_record("a")
    reopened.close()


def test_sqlite_store_works_again_after_close(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    store.create(a_record("a"))
    store.close()
    assert store.get("a") == a_record("a")
    store.close()


def _claim_in_process(url: str, start: ProcessBarrier, results: ProcessQueue[list[str]]) -> None:
    store = open_store(url)
    start.wait(timeout=30)
    claimed = [job.job_id for job in store.claim_due(NOW, 3, 600)]
    # Both processes hold a first batch before either goes on, so they do race for the rest.
    start.wait(timeout=30)
    while (batch := store.claim_due(NOW, 3, 600)) and len(claimed) <= 400:
        claimed += [job.job_id for job in batch]
    store.close()
    results.put(claimed)


def test_sqlite_claimers_in_two_processes_never_share_an_entry(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    ids = [f"s{i:03d}" for i in range(400)]
    for job_id in ids:
        store.schedule(ScheduledJob(job_id, "q", NOW, "p"))
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results: ProcessQueue[list[str]] = context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(sqlite_url, start, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    claimed = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert all(len(got) >= 3 for got in claimed)
    assert sorted(claimed[0] + claimed[1]) == ids
    store.close()


# -- open_store -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://user:s3cret@host/x", "unknown scheme 'ftp'"),
        ("redis://:s3cret@host:port/0", "malformed"),
        ("redis://user:s3cret@[::1/0", "malformed"),
        ("redis://:s3cret@host/0?key_prefix=a&timeout=3", "unknown query option 'timeout'"),
        ("redis://:s3cret@host/0?key_prefix=a&key_prefix=b", "given twice"),
        ("redis://:s3cret@host/zero", "expected redis://"),
        ("sqlite://relative/jobs.sqlite3", "expected sqlite:///"),
        ("sqlite:///tmp/jobs.sqlite3?mode=ro", "unknown query option 'mode'"),
        ("memory://?x=1", "unknown query option 'x'"),
        ("jobs.sqlite3", "unknown scheme ''"),
    ],
)
def test_a_bad_url_is_named_without_its_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    message = str(caught.value)
    assert problem in message
    assert "s3cret" not in message
    assert url.replace("s3cret", "***") in message
    assert "memory://, sqlite://, redis://" in message


@pytest.mark.parametrize("options", [{"retention_seconds": 0}, {"result_limit_bytes": -1}], ids=str)
def test_limits_must_be_positive(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(options))):
        open_store("memory://", **options)  # type: ignore[arg-type]


def test_store_reprs_hide_the_password(tmp_path: Path) -> None:
    redis_store = open_store("redis://user:s3cret@127.0.0.1:6379/2?key_prefix=app:")
    assert repr(redis_store) == "RedisStore('redis://user:***@127.0.0.1:6379/2?key_prefix=app:')"
    redis_store.close()
    assert repr(open_store("memory://x")) == "MemoryStore('memory://x')"
    url = f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    assert repr(open_store(url)) == f"SQLiteStore({url!r})"


def test_open_store_passes_the_limits_on(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path / 'jobs.sqlite3'}", retention_seconds=5)
    assert (store.retention_seconds, store.result_limit_bytes) == (5, 1024 * 1024)


def test_sqlite_adds_the_history_table_to_an_existing_file(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "jobs.sqlite3"
    old = open_store(sqlite_url)
    old.create(a_record("before"))
    old.close()
    conn = sqlite3.connect(path)  # make it what a file of schema version 1 holds
    conn.execute("DROP TABLE job_errors")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = open_store(sqlite_url)
    store.apply([failed_attempt("before", 1)])
    record = store.get("before")
    store.close()
    assert record is not None and [e.error_message for e in record.errors] == ["boom 1"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 2
    conn.close()


def test_sqlite_purge_deletes_the_history_of_expired_records(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    store.create(a_record("gone"))
    store.create(a_record("kept"))
    store.apply([failed_attempt("gone", 1, status="failed"), failed_attempt("kept", 1)])
    assert store.purge_expired(time.time() + store.retention_seconds + 1) == 1
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite://"))
    rows = conn.execute("SELECT job_id FROM job_errors").fetchall()
    conn.close()
    store.close()
    assert rows == [("kept",)]


def test_sqlite_updates_look_for_expired_records_in_the_expiry_index(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch of updates first asks whether any record has expired at all: a search
    of the partial index on ``expires_at``, not a scan; only then are the batch's ids
    looked up (the contract's expired-record tests cover that path)."""
    from uno_jobs.store import _sqlite

    store = open_store(sqlite_url)
    assert isinstance(store, _sqlite.SQLiteStore)
    store.create(a_record("a"))
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite://"))
    plan = conn.execute(f"EXPLAIN QUERY PLAN {_sqlite._ANY_EXPIRED}", (time.time(),)).fetchall()
    conn.close()
    assert "USING COVERING INDEX jobs_expires_at" in plan[0][-1], plan
    statements: list[str] = []
    store._connections.get().set_trace_callback(statements.append)

    def lookups() -> list[str]:
        found = [sql for sql in statements if sql.startswith("SELECT id FROM jobs WHERE")]
        statements.clear()
        return found

    store.apply([failed_attempt("a", 1, status="failed")])  # "a" expires a day from now
    assert lookups() == []
    store.create(a_record("b"))
    later = time.time() + 10 * store.retention_seconds
    monkeypatch.setattr(_sqlite.time, "time", lambda: later)
    store.apply([failed_attempt("b", 1)])  # "a" has expired by now: the ids are looked up
    assert len(lookups()) == 1
    store.close()


def test_connections_opening_a_fresh_sqlite_database_at_once_all_succeed(tmp_path: Path) -> None:
    """The WAL switch of a new database is contended: "database is locked" came out of it
    without SQLite's busy handler (a Queue and a worker starting together saw it)."""
    import threading

    errors: list[str] = []
    for i in range(40):
        url = f"sqlite:///{tmp_path}/fresh-{i}.sqlite3"
        stores = [open_store(url) for _ in range(4)]
        barrier = threading.Barrier(len(stores))

        def first_use(store: JobStore, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                store.get("nothing")
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        for store in stores:
            store.close()
    assert errors == []
