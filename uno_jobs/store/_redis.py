"""The Redis job store (``redis://host:port/db?key_prefix=uno_jobs:``).

Keys, all under the prefix:

- ``job:{id}``: one hash per record, holding only the fields that are set. Finished
  records carry an ``EXPIRE`` of the retention, so Redis forgets them by itself.
- ``dead_letters`` and ``dead_letters:{queue}``: sorted sets of dead-letter entries (JSON)
  scored by time; ``dead_letter_queues`` is the set of queues that have one.
- ``schedule``: a sorted set of job ids scored by the time they may be claimed, and
  ``schedule_payloads``: a hash of job id to the entry (JSON).

Every operation that must be atomic is one Lua script, and every batch is one round trip.
The scripts touch several keys, so the store needs one Redis (not a Redis Cluster).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from uno_jobs.config import redact_url
from uno_jobs.errors import DuplicateJobError
from uno_jobs.store._base import (
    DEFAULT_RESULT_LIMIT_BYTES,
    DEFAULT_RETENTION_SECONDS,
    FINISHED,
    DeadLetter,
    JobRecord,
    JobUpdate,
    ScheduledJob,
    first_repeated,
    record_columns,
    record_from_columns,
    update_columns,
)

__all__ = ["DEFAULT_KEY_PREFIX", "RedisStore"]

DEFAULT_KEY_PREFIX = "uno_jobs:"
SOCKET_TIMEOUT_SECONDS = 5.0
_FINISHED_VALUES = frozenset(status.value for status in FINISHED)
_INT_FIELDS = frozenset({"attempts", "worker_lost"})
_FLOAT_FIELDS = frozenset({"enqueued_at", "started_at", "finished_at"})

# KEYS: record keys. ARGV, per record: pexpire ms ('' for none), item count, field/value
# items. Returns the 1-based index of the first key that exists (nothing written), or 0.
_CREATE_SCRIPT = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return i end
end
local a = 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[a + 1])
  redis.call('HSET', KEYS[i], unpack(ARGV, a + 2, a + 1 + n))
  if ARGV[a] ~= '' then redis.call('PEXPIRE', KEYS[i], ARGV[a]) end
  a = a + 2 + n
end
return 0
"""

# KEYS: record keys, one per update, in order. ARGV, per update: id, task, queue, expiry
# ('' keep, '-' persist, else pexpire ms), count of items to set, count of fields to delete,
# the field/value items, the field names. A missing record is created as queued first.
_APPLY_SCRIPT = """
local a = 1
for i = 1, #KEYS do
  local key = KEYS[i]
  local n_set = tonumber(ARGV[a + 4])
  local n_del = tonumber(ARGV[a + 5])
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'id', ARGV[a], 'task', ARGV[a + 1], 'queue', ARGV[a + 2],
               'status', 'queued')
  end
  local s = a + 6
  if n_set > 0 then redis.call('HSET', key, unpack(ARGV, s, s + n_set - 1)) end
  if n_del > 0 then redis.call('HDEL', key, unpack(ARGV, s + n_set, s + n_set + n_del - 1)) end
  local expiry = ARGV[a + 3]
  if expiry == '-' then
    redis.call('PERSIST', key)
  elseif expiry ~= '' then
    redis.call('PEXPIRE', key, expiry)
  end
  a = s + n_set + n_del
end
return #KEYS
"""

# KEYS: schedule zset, payload hash. ARGV: now, limit, end of lease. Due entries are
# re-scored to the end of the lease, so a claimer that dies leaves them due again.
_CLAIM_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local entry = redis.call('HGET', KEYS[2], id)
  if entry then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    out[#out + 1] = entry
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""


def _to_text(name: str, value: Any) -> str:
    if name == "result_truncated":
        return "1" if value else "0"
    if name in _FLOAT_FIELDS:
        return repr(float(value))
    return str(value)


def _from_text(name: str, text: str) -> Any:
    if name == "result_truncated":
        return text == "1"
    if name in _INT_FIELDS:
        return int(text)
    if name in _FLOAT_FIELDS:
        return float(text)
    return text


def _items(columns: dict[str, Any]) -> list[str]:
    """Field/value items for HSET: the columns that are set."""
    items: list[str] = []
    for name, value in columns.items():
        if value is not None:
            items += (name, _to_text(name, value))
    return items


class RedisStore:
    """A ``JobStore`` in Redis, shared by every host that reaches the server.

    A dead server is an error within ``SOCKET_TIMEOUT_SECONDS``, not a hang, and calls are
    not retried behind the caller's back (a retried ``create`` could refuse its own job).

    Args:
        url: ``redis://`` or ``rediss://`` URL of the server and database; a query
            string is ignored here (``open_store`` reads ``key_prefix`` from it).
        key_prefix: Put in front of every key, so several applications share a database.
        retention_seconds: How long finished records and dead letters are kept.
        result_limit_bytes: The largest JSON-encoded result that is stored.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        result_limit_bytes: int = DEFAULT_RESULT_LIMIT_BYTES,
    ) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.retention_seconds = retention_seconds
        self.result_limit_bytes = result_limit_bytes
        parts = urlsplit(url)
        self._client: redis.Redis[str] = redis.Redis.from_url(
            urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            decode_responses=True,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        self._create = self._client.register_script(_CREATE_SCRIPT)
        self._apply = self._client.register_script(_APPLY_SCRIPT)
        self._claim = self._client.register_script(_CLAIM_SCRIPT)
        self._dead_all = f"{key_prefix}dead_letters"
        self._dead_queues = f"{key_prefix}dead_letter_queues"
        self._schedule = f"{key_prefix}schedule"
        self._payloads = f"{key_prefix}schedule_payloads"

    def __repr__(self) -> str:
        return f"RedisStore({redact_url(self.url)!r})"

    def _key(self, job_id: str) -> str:
        return f"{self.key_prefix}job:{job_id}"

    def _dead_key(self, queue: str) -> str:
        return f"{self.key_prefix}dead_letters:{queue}"

    def _expiry_ms(self) -> str:
        return str(max(1, round(self.retention_seconds * 1000)))

    def create(self, record: JobRecord) -> None:
        """Insert a new record. Raises ``DuplicateJobError`` if the id exists."""
        self.create_many([record])

    def create_many(self, records: Sequence[JobRecord]) -> None:
        """Insert many new records in one Lua script; all or nothing.

        Raises:
            DuplicateJobError: The first id that exists (or repeats); nothing is written.
        """
        if not records:
            return
        ids = [record.id for record in records]
        repeated = first_repeated(ids)
        if repeated is not None:
            raise DuplicateJobError(repeated)
        args: list[str] = []
        for record in records:
            items = _items(record_columns(record, self.result_limit_bytes))
            expiry = self._expiry_ms() if record.status.value in _FINISHED_VALUES else ""
            args += (expiry, str(len(items)), *items)
        existing = int(self._create(keys=[self._key(i) for i in ids], args=args))
        if existing:
            raise DuplicateJobError(ids[existing - 1])

    def delete(self, job_ids: Iterable[str]) -> None:
        """Remove records (used to undo ``create`` when a publish failed)."""
        keys = [self._key(job_id) for job_id in job_ids]
        if keys:
            self._client.delete(*keys)

    def get(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id``, or ``None`` if there is none or it expired."""
        stored = self._client.hgetall(self._key(job_id))
        if not stored:
            return None
        return record_from_columns({name: _from_text(name, t) for name, t in stored.items()})

    def apply(self, updates: Sequence[JobUpdate]) -> None:
        """Apply updates in order, in one Lua script (see ``JobStore.apply``).

        A finished status sets an ``EXPIRE`` of the retention, any other status removes
        it. Results that are too large or not JSON are stored as ``None`` with
        ``result_truncated=True``.

        Raises:
            ValueError: An update names an unknown field or status; nothing is applied.
        """
        if not updates:
            return
        args: list[str] = []
        for update in updates:
            columns = update_columns(update, self.result_limit_bytes)
            items = _items(columns)
            removed = [name for name, value in columns.items() if value is None]
            status = columns.get("status")
            expiry = "" if status is None else "-"
            if status in _FINISHED_VALUES:
                expiry = self._expiry_ms()
            args += (update.job_id, update.task, update.queue, expiry)
            args += (str(len(items)), str(len(removed)), *items, *removed)
        self._apply(keys=[self._key(update.job_id) for update in updates], args=args)

    def add_dead_letter(self, entry: DeadLetter) -> None:
        """Index a dead-lettered job under its queue and under all queues."""
        member = json.dumps(
            [entry.job_id, entry.task, entry.queue, entry.reason, entry.error, entry.dead_at]
        )
        pipe = self._client.pipeline(transaction=True)
        pipe.zadd(self._dead_all, {member: entry.dead_at})
        pipe.zadd(self._dead_key(entry.queue), {member: entry.dead_at})
        pipe.sadd(self._dead_queues, entry.queue)
        pipe.execute()

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of ``queue`` (or of every queue), newest first."""
        if limit <= 0:
            return []
        key = self._dead_all if queue is None else self._dead_key(queue)
        members = self._client.zrevrange(key, 0, limit - 1)
        return [DeadLetter(*json.loads(member)) for member in members]

    def schedule(self, job: ScheduledJob) -> None:
        """Keep a message until ``due_at`` (replaces an entry with the same job id)."""
        entry = json.dumps([job.job_id, job.routing_key, job.due_at, job.payload])
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self._payloads, job.job_id, entry)
        pipe.zadd(self._schedule, {job.job_id: job.due_at})
        pipe.execute()

    def claim_due(self, now: float, limit: int, lease_seconds: float) -> list[ScheduledJob]:
        """Claim up to ``limit`` due entries for ``lease_seconds`` (see ``JobStore``).

        One Lua script picks the due entries and moves their score to the end of the lease,
        so concurrent claimers never get the same entry.
        """
        if limit <= 0:
            return []
        entries = self._claim(
            keys=[self._schedule, self._payloads],
            args=[repr(float(now)), str(limit), repr(float(now + lease_seconds))],
        )
        return [ScheduledJob(*json.loads(entry)) for entry in entries]

    def release_scheduled(self, job_ids: Sequence[str]) -> None:
        """Remove entries after they were published."""
        if not job_ids:
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(self._schedule, *job_ids)
        pipe.hdel(self._payloads, *job_ids)
        pipe.execute()

    def scheduled_count(self) -> int:
        """How many entries are waiting (claimed ones included)."""
        return int(self._client.zcard(self._schedule))

    def purge_expired(self, now: float) -> int:
        """Trim dead letters past retention; returns how many entries were removed.

        Records need no purge: finished ones carry an ``EXPIRE``, so Redis deletes them.
        """
        cutoff = repr(float(now - self.retention_seconds))
        queues = self._client.smembers(self._dead_queues)
        pipe = self._client.pipeline(transaction=True)
        pipe.zremrangebyscore(self._dead_all, "-inf", cutoff)
        for queue in sorted(queues):
            pipe.zremrangebyscore(self._dead_key(queue), "-inf", cutoff)
        return int(pipe.execute()[0])

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
