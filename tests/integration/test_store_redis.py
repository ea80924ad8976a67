"""The Redis job store against the real Redis on 127.0.0.1:6379 (database 0).

Each test uses its own key prefix and deletes every key under it at the end.
"""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# The contract lives beside the test folders so the unit suite can use it too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cancel_contract import CancellationContract
from store_contract import NOW, StoreContract, a_record, wait_for
from store_history_contract import HistoryContract, failed_attempt

from uno_jobs.errors import StoreUnavailableError
from uno_jobs.store import DeadLetter, JobStore, JobUpdate, open_store

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def client() -> Iterator[redis.Redis[str]]:
    connection: redis.Redis[str] = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def key_prefix(client: redis.Redis[str]) -> Iterator[str]:
    prefix = f"uno_jobs_test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


class TestRedisStore(StoreContract, CancellationContract, HistoryContract):
    @pytest.fixture
    def store_url(self, key_prefix: str) -> str:
        return f"{REDIS_URL}?key_prefix={key_prefix}"

    def assert_expiring(self, store: JobStore, expiring: list[str], lasting: list[str]) -> None:
        """Redis expires records itself: check their TTLs instead of waiting."""
        client = redis.Redis.from_url(REDIS_URL)
        prefix = getattr(store, "key_prefix", None)
        retention_ms = store.retention_seconds * 1000
        ttls = {job_id: client.pttl(f"{prefix}job:{job_id}") for job_id in expiring + lasting}
        client.close()
        assert {j: 0 < ttls[j] <= retention_ms for j in expiring} == dict.fromkeys(expiring, True)
        assert {j: ttls[j] for j in lasting} == dict.fromkeys(lasting, -1)


def test_a_record_is_one_hash_under_the_prefix(client: redis.Redis[str], key_prefix: str) -> None:
    store = open_store(f"{REDIS_URL}?key_prefix={key_prefix}")
    store.create(a_record("a"))
    store.apply([JobUpdate("a", "t", "q", {"status": "running", "attempts": 1})])
    assert client.type(f"{key_prefix}job:a") == "hash"  # type: ignore[no-untyped-call]
    assert client.hgetall(f"{key_prefix}job:a") == {
        "id": "a",
        "task": "reports.generate",
        "queue": "default",
        "status": "running",
        "priority": "normal",
        "attempts": "1",
        "worker_lost": "0",
        "enqueued_at": repr(NOW),
        "result_truncated": "0",
    }
    store.close()


def test_dead_letters_sit_in_a_sorted_set_per_queue(
    client: redis.Redis[str], key_prefix: str
) -> None:
    store = open_store(f"{REDIS_URL}?key_prefix={key_prefix}")
    store.add_dead_letter(DeadLetter("a", "t", "q1", "timeout", None, NOW))
    assert client.zcard(f"{key_prefix}dead_letters:q1") == 1
    assert client.zcard(f"{key_prefix}dead_letters") == 1
    store.close()


def test_the_default_prefix_is_uno_jobs() -> None:
    store = open_store(REDIS_URL)
    assert getattr(store, "key_prefix", None) == "uno_jobs:"
    store.close()


def test_an_unreachable_redis_fails_fast() -> None:
    store = open_store("redis://127.0.0.1:1/0")  # nothing listens on port 1
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=re.escape("job store redis://127.0.0.1:1/0")):
        store.get("a")
    assert time.monotonic() - started < 3
    store.close()


def test_the_history_is_a_list_that_shares_the_records_ttl(
    client: redis.Redis[str], key_prefix: str
) -> None:
    store = open_store(f"{REDIS_URL}?key_prefix={key_prefix}", retention_seconds=30)
    store.create(a_record("a"))
    store.apply([failed_attempt("a", 1)])
    errors_key = f"{key_prefix}job_errors:a"
    assert client.type(errors_key) == "list"  # type: ignore[no-untyped-call]
    assert client.pttl(errors_key) == -1, "no TTL while the job is not finished"
    store.apply([failed_attempt("a", 2, status="failed")])
    # Read one after the other, a millisecond may pass between the two.
    errors_ttl, record_ttl = client.pttl(errors_key), client.pttl(f"{key_prefix}job:a")
    assert 0 < errors_ttl <= 30_000 and 0 < record_ttl <= 30_000
    assert abs(errors_ttl - record_ttl) <= 100, "the history shares the record's TTL"
    store.apply([JobUpdate("a", "t", "q", {"status": "queued"})])  # requeued: kept again
    assert client.pttl(errors_key) == -1
    short = open_store(f"{REDIS_URL}?key_prefix={key_prefix}", retention_seconds=0.2)
    short.apply([JobUpdate("a", "t", "q", {"status": "dead"})])
    wait_for(lambda: client.exists(errors_key, f"{key_prefix}job:a") == 0)
    store.close()
    short.close()


def test_the_quick_cancellations_read_answers_as_the_plain_one(key_prefix: str) -> None:
    store = open_store(f"{REDIS_URL}?key_prefix={key_prefix}")
    try:
        assert store.cancellations_quick(None) == store.cancellations(None)  # type: ignore[attr-defined]
        store.cancel("a", time.time())
        store.cancel("b", time.time())
        version, ids = store.cancellations(None)
        assert ids == {"a", "b"}
        assert store.cancellations_quick(None) == (version, ids)  # type: ignore[attr-defined]
        assert store.cancellations_quick(version) == (version, None)  # type: ignore[attr-defined]
        store.cancel("c", time.time())
        assert store.cancellations_quick(version) == (  # type: ignore[attr-defined]
            version + 1,
            {"a", "b", "c"},
        )
    finally:
        store.close()


def test_a_quick_read_of_a_redis_that_is_down_gives_up_and_then_leaves_it_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store("redis://127.0.0.1:1/0")
    try:
        assert store.cancellations_quick(None) is None  # type: ignore[attr-defined]
        runner = store._quick_runner  # type: ignore[attr-defined]
        calls: list[object] = []
        monkeypatch.setattr(type(runner), "__call__", lambda self, *a: calls.append(a))
        assert store.cancellations_quick(None) is None  # type: ignore[attr-defined]
        assert calls == [], "no new attempt during the pause"
        with pytest.raises(StoreUnavailableError):  # the plain read still says why
            store.cancellations(None)
    finally:
        store.close()
