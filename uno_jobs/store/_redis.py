"""The Redis job store (``redis://host:port/db?key_prefix=uno_jobs:``).

Keys, all under the prefix:

- ``job:{id}``: one hash per record, holding only the fields that are set. Finished
  records carry an ``EXPIRE`` of the retention, so Redis forgets them by itself.
- ``job_errors:{id}``: a list of the record's failed attempts (JSON), oldest first, trimmed
  to ``MAX_ATTEMPT_ERRORS``; every write that touches it gives it the record's TTL.
- ``dead_letters`` and ``dead_letters:{queue}``: sorted sets of dead-letter entries (JSON)
  scored by time; ``dead_letter_queues`` is the set of queues that have one.
- ``schedule``: a sorted set of job ids scored by the time they may be claimed, and
  ``schedule_payloads``: a hash of job id to the entry (JSON).
- ``cancelled``: a sorted set of cancelled job ids scored by the time of cancellation, and
  ``cancel_version``: a counter that every change to it moves on.

Every operation that must be atomic is one Lua script, and every batch is one round trip.
The scripts touch several keys, so the store needs one Redis (not a Redis Cluster).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from uno_jobs.config import redact_url
from uno_jobs.errors import DuplicateJobError, StoreUnavailableError
from uno_jobs.message._plainjson import plain_json
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
    JobUpdate,
    PushRefusedError,
    ScheduledJob,
    first_repeated,
    plain_record_values,
    record_columns,
    record_from_columns,
    update_columns,
)
from uno_jobs.store._redis_script import ScriptRunner

__all__ = ["DEFAULT_KEY_PREFIX", "RedisStore"]

DEFAULT_KEY_PREFIX = "uno_jobs:"
SOCKET_TIMEOUT_SECONDS = 5.0
# ``cancellations_quick``: how long a worker's event loop may wait for Redis, and how long
# it leaves Redis alone (reading in a thread instead) after that failed.
QUICK_READ_SECONDS = 0.25
QUICK_READ_PAUSE_SECONDS = 5.0
_FINISHED_VALUES = frozenset(status.value for status in FINISHED)
_INT_FIELDS = frozenset({"attempts", "worker_lost"})
_FLOAT_FIELDS = frozenset({"enqueued_at", "started_at", "finished_at"})
# Job ids per UNCANCEL call: Lua's unpack has a limit on the number of values.
_UNCANCEL_CHUNK = 1000

# KEYS: per record, its hash and its errors list; then one key per command. ARGV: the
# record count, 'refuse' or 'skip' (what an existing record does: refuse the call, or is
# left as it is, but for an enqueue time it lacks); per record: pexpire ms ('' for
# none), its fields (a JSON object of texts), its errors (a JSON array of JSON texts);
# then per command: its name (lpush or pexpire, a broker's publish: ``create_and_push``),
# its argument count and its arguments after the key. A record goes as JSON because
# redis-py packs every argument in Python: three per record instead of two per field.
# Returns 0 when done; when refusing, the 1-based index of the first record that exists;
# {key, type} for an lpush key that is not a list. Both are found before anything is
# written: Redis does not undo a script's writes when a later command fails.
_CREATE_SCRIPT = """
local n, refuse = tonumber(ARGV[1]), ARGV[2] == 'refuse'
local exists = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then
    if refuse then return i end
    exists[i] = true
  end
end
local first = 3 + 3 * n
local a, k = first, 2 * n + 1
while a <= #ARGV do
  if ARGV[a] == 'lpush' then
    local kind = redis.call('TYPE', KEYS[k])['ok']
    if kind ~= 'none' and kind ~= 'list' then return {KEYS[k], kind} end
  end
  k, a = k + 1, a + 2 + tonumber(ARGV[a + 1])
end
for i = 1, n do
  local key, a = KEYS[2 * i - 1], 3 * i
  if exists[i] then
    local enqueued = cjson.decode(ARGV[a + 1])['enqueued_at']
    if enqueued then redis.call('HSETNX', key, 'enqueued_at', enqueued) end
  else
    local errors = KEYS[2 * i]
    local items = {}
    for field, value in pairs(cjson.decode(ARGV[a + 1])) do
      items[#items + 1] = field
      items[#items + 1] = value
    end
    redis.call('HSET', key, unpack(items))
    redis.call('DEL', errors)
    local errs = cjson.decode(ARGV[a + 2])
    if #errs > 0 then redis.call('RPUSH', errors, unpack(errs)) end
    if ARGV[a] ~= '' then
      redis.call('PEXPIRE', key, ARGV[a])
      redis.call('PEXPIRE', errors, ARGV[a])
    end
  end
end
a, k = first, 2 * n + 1
while a <= #ARGV do
  local count = tonumber(ARGV[a + 1])
  redis.call(ARGV[a], KEYS[k], unpack(ARGV, a + 2, a + 1 + count))
  k, a = k + 1, a + 2 + count
end
return 0
"""

# The broker commands ``create_and_push`` runs after the records (see the script above):
# (name, key, arguments).
_Command = tuple[str, str, tuple[Any, ...]]
_PUSH_COMMANDS = frozenset({"lpush", "pexpire"})

# KEYS: per update, in order, the record's hash and its errors list. ARGV, per update: id,
# task, queue, expiry ('' keep, '-' persist, else pexpire ms), count of items to set, count
# of fields to delete, an attempt error to append (JSON, '' for none), the field/value
# items, the field names. A missing record is created as queued first (and stale errors of
# an expired one are dropped); the errors list always ends with the record's TTL.
_APPLY_SCRIPT = """
local a = 1
for i = 1, #KEYS, 2 do
  local key, errors = KEYS[i], KEYS[i + 1]
  local n_set = tonumber(ARGV[a + 4])
  local n_del = tonumber(ARGV[a + 5])
  local err = ARGV[a + 6]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'id', ARGV[a], 'task', ARGV[a + 1], 'queue', ARGV[a + 2],
               'status', 'queued')
    redis.call('DEL', errors)
  end
  local s = a + 7
  if n_set > 0 then redis.call('HSET', key, unpack(ARGV, s, s + n_set - 1)) end
  if n_del > 0 then redis.call('HDEL', key, unpack(ARGV, s + n_set, s + n_set + n_del - 1)) end
  local expiry = ARGV[a + 3]
  if expiry == '-' then
    redis.call('PERSIST', key)
  elseif expiry ~= '' then
    redis.call('PEXPIRE', key, expiry)
  end
  if err ~= '' then
    redis.call('RPUSH', errors, err)
    redis.call('LTRIM', errors, -MAX_ATTEMPT_ERRORS, -1)
  end
  if err ~= '' or expiry ~= '' then
    local ttl = redis.call('PTTL', key)
    if ttl > 0 then redis.call('PEXPIRE', errors, ttl) else redis.call('PERSIST', errors) end
  end
  a = s + n_set + n_del
end
return #KEYS / 2
""".replace("MAX_ATTEMPT_ERRORS", str(MAX_ATTEMPT_ERRORS))

# KEYS: schedule zset, payload hash. ARGV: now, limit, end of lease. Due entries are
# re-scored to the end of the lease, so a claimer that dies leaves them due again.
# KEYS: schedule zset, payload hash. ARGV: job id, now. Removes and returns the entry
# unless a mover claimed it: a claimed entry is scored at the end of its lease, past its
# due time (the entry's third item) and past now.
_UNSCHEDULE_SCRIPT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not score or not entry then return false end
local available = tonumber(score)
if available > tonumber(cjson.decode(entry)[3]) and available > tonumber(ARGV[2]) then
  return false
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return entry
"""

# KEYS: cancelled zset, version counter. ARGV: job ids. Moves the version on if any was there.
_UNCANCEL_SCRIPT = """
local removed = redis.call('ZREM', KEYS[1], unpack(ARGV))
if removed > 0 then redis.call('INCR', KEYS[2]) end
return removed
"""

# KEYS: cancelled zset, version counter. ARGV: the caller's version ('' for none), the
# retention cutoff. Returns {version} if unchanged, else {version, id, id, ...}.
_CANCELLATIONS_SCRIPT = """
local version = redis.call('GET', KEYS[2]) or '0'
if version == ARGV[1] then return {version} end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')
table.insert(ids, 1, version)
return ids
"""

# KEYS: all-queues dead letters, the queue's dead letters, the set of queues. ARGV: queue,
# '*' to remove every entry of the queue or '' to remove those of the job ids that follow.
_REMOVE_DEAD_SCRIPT = """
local wanted = nil
if ARGV[2] ~= '*' then
  wanted = {}
  for i = 3, #ARGV do wanted[ARGV[i]] = true end
end
local removed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if wanted == nil or wanted[cjson.decode(member)[1]] then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    removed = removed + 1
  end
end
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return removed
"""

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


def _client(url: str, timeout: float) -> redis.Redis:
    """A client of the store's database (the URL's query string dropped), decoding
    replies, with ``timeout`` to connect and to read, and no retries."""
    parts = urlsplit(url)
    return redis.Redis.from_url(
        urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _server_of(url: str) -> tuple[str, str, int, str, str]:
    """What names a Redis database in a URL: scheme, host, port, user and database (the
    path's number, or a ``db`` query parameter). Two URLs that spell one database
    differently compare unequal, which only costs the combined write its use."""
    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db", [parts.path.strip("/") or "0"])[0]
    return (
        parts.scheme,
        (parts.hostname or "localhost").lower(),
        parts.port or 6379,
        parts.username or "",
        db,
    )


def _error_json(error: AttemptError) -> str:
    return json.dumps(error.to_dict(), separators=(",", ":"))


def _texts(columns: dict[str, Any]) -> dict[str, str]:
    """The columns that are set, as the texts the record's hash holds."""
    return {name: _to_text(name, value) for name, value in columns.items() if value is not None}


def _compact(value: Any) -> str:
    data = plain_json(value)
    if data is None:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return data.decode()


def _push_commands(commands: Sequence[_Command]) -> list[_Command]:
    """``commands`` in lower case (the create script checks the type of an lpush's list
    by that name), each checked to be a push.

    Raises:
        ValueError: a command other than ``LPUSH`` or ``PEXPIRE``.
    """
    lowered = [(name.lower(), key, rest) for name, key, rest in commands]
    for name, _, _ in lowered:
        if name not in _PUSH_COMMANDS:
            raise ValueError(f"RedisStore.create_and_push: command {name!r} is not a push")
    return lowered


def _record_texts(record: JobRecord, limit_bytes: int) -> tuple[dict[str, str], list[str]]:
    """The texts of the record's hash (``_texts`` of its columns) and its errors' JSON."""
    values = plain_record_values(record)
    if values is not None:
        texts = {
            name: value if type(value) is str else _to_text(name, value)
            for name, value in zip(RECORD_FIELDS, values, strict=True)
            if value is not None
        }
        return texts, []
    columns = record_columns(record, limit_bytes)
    errors = [_error_json(AttemptError.from_value(e)) for e in columns.pop("errors")]
    return _texts(columns), errors


def _items(columns: dict[str, Any]) -> list[str]:
    """Field/value items for HSET: the columns that are set."""
    items: list[str] = []
    for name, value in columns.items():
        if value is not None:
            items += (name, _to_text(name, value))
    return items


_Store = TypeVar("_Store", bound=type)


def _unavailable_is_store_error(cls: _Store) -> _Store:
    """Make every public method raise ``StoreUnavailableError`` (naming the store, its URL
    redacted) where redis-py raised its connection or timeout error, so callers and the
    CLI see the store named, as a broker that is down is named."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise StoreUnavailableError(
                    redact_url(self.url), str(exc) or type(exc).__name__
                ) from exc

        return call

    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith("_") and name != "close":
            setattr(cls, name, wrap(value))
    return cls


@_unavailable_is_store_error
class RedisStore:
    """A ``JobStore`` in Redis, shared by every host that reaches the server.

    A dead server is an error within ``SOCKET_TIMEOUT_SECONDS``, not a hang
    (``StoreUnavailableError``, naming the store), and calls are not retried behind the
    caller's back (a retried ``create`` could refuse its own job).

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
        self._client = _client(url, SOCKET_TIMEOUT_SECONDS)
        self._create = ScriptRunner(self._client, _CREATE_SCRIPT)
        self._apply = ScriptRunner(self._client, _APPLY_SCRIPT)
        self._claim = self._client.register_script(_CLAIM_SCRIPT)
        self._unschedule = self._client.register_script(_UNSCHEDULE_SCRIPT)
        self._uncancel = self._client.register_script(_UNCANCEL_SCRIPT)
        self._cancellations = self._client.register_script(_CANCELLATIONS_SCRIPT)
        self._remove_dead = self._client.register_script(_REMOVE_DEAD_SCRIPT)
        self._quick_client: redis.Redis | None = None
        self._quick_runner: ScriptRunner | None = None
        self._quick_paused_until = 0.0
        self._quick_lock = threading.Lock()
        self._cancelled = f"{key_prefix}cancelled"
        self._cancel_version = f"{key_prefix}cancel_version"
        self._dead_all = f"{key_prefix}dead_letters"
        self._dead_queues = f"{key_prefix}dead_letter_queues"
        self._schedule = f"{key_prefix}schedule"
        self._payloads = f"{key_prefix}schedule_payloads"

    def __repr__(self) -> str:
        return f"RedisStore({redact_url(self.url)!r})"

    def _key(self, job_id: str) -> str:
        return f"{self.key_prefix}job:{job_id}"

    def _errors_key(self, job_id: str) -> str:
        return f"{self.key_prefix}job_errors:{job_id}"

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
        self._run_create(records, refuse=True)

    def create_missing(self, records: Sequence[JobRecord]) -> None:
        """Insert the records whose id has none yet, in one script; an existing record
        (a worker that started the job first) is left as it is, but for an enqueue time
        it lacks."""
        self._run_create(records, refuse=False)

    def create_and_push(
        self, records: Sequence[JobRecord], commands: Sequence[tuple[str, str, tuple[Any, ...]]]
    ) -> None:
        """Insert new records and, in the same atomic script, run a Redis broker's
        publish commands (``LPUSH``/``PEXPIRE`` of ``Broker.capture``; keys as they are in
        Redis): the jobs exist and their messages are queued, or neither. Only for a
        broker on this store's server and database (``same_database``).

        Raises:
            DuplicateJobError: The first id that exists (or repeats); nothing is written
                and nothing is pushed.
            PushRefusedError: a list to push to is another type of key; nothing is
                written and nothing is pushed.
            ValueError: a command other than ``LPUSH`` or ``PEXPIRE``.
        """
        self._run_create(records, refuse=True, commands=_push_commands(commands))

    def create_and_push_pieces(
        self,
        pieces: Iterable[tuple[Sequence[JobRecord], Sequence[_Command]]],
    ) -> None:
        """``create_and_push`` of a batch in pieces, each piece its own atomic script, sent
        without waiting for the reply to the one before (``ScriptRunner.pipeline``): Redis
        runs a piece while ``pieces``, a generator, makes the next (a bulk enqueue's
        capture of the next messages).

        Not atomic as a whole: for jobs whose ids were made fresh (none can exist) and
        whose messages all go to the same lists, so that the type check of the first
        piece's lists holds for every piece. A piece refused after all (a list changed
        type in between) leaves the pieces before it written and pushed.

        Raises:
            DuplicateJobError: The first id that exists, of the first piece refused.
            PushRefusedError: A list of the first piece refused is another type of key.
            ValueError: a command other than ``LPUSH`` or ``PEXPIRE``.
        """
        sent: list[list[str]] = []

        def calls() -> Iterator[tuple[list[str], list[Any]]]:
            for records, commands in pieces:
                call = self._create_call(records, True, _push_commands(commands))
                sent.append([record.id for record in records])
                yield call

        for reply, ids in zip(self._create.pipeline(calls()), sent, strict=True):
            if isinstance(reply, Exception):
                raise reply
            self._check_created(reply, ids)

    def same_database(self, url: str) -> bool:
        """Whether the Redis URL ``url`` (a broker's) names this store's server and
        database (scheme, host, port, user and database: the path's number, or a ``db``
        query parameter; other query parameters are ignored)."""
        return _server_of(url) == _server_of(self.url)

    def _run_create(
        self,
        records: Sequence[JobRecord],
        refuse: bool,
        commands: Sequence[tuple[str, str, tuple[Any, ...]]] = (),
    ) -> None:
        if not records and not commands:
            return
        keys, args = self._create_call(records, refuse, commands)
        self._check_created(self._create(keys=keys, args=args), [r.id for r in records])

    def _create_call(
        self,
        records: Sequence[JobRecord],
        refuse: bool,
        commands: Sequence[_Command],
    ) -> tuple[list[str], list[Any]]:
        """The create script's keys and arguments.

        Raises:
            DuplicateJobError: an id repeats among ``records``.
        """
        repeated = first_repeated([record.id for record in records])
        if repeated is not None:
            raise DuplicateJobError(repeated)
        args: list[Any] = [str(len(records)), "refuse" if refuse else "skip"]
        keys: list[str] = []
        for record in records:
            texts, errors = _record_texts(record, self.result_limit_bytes)
            expiry = self._expiry_ms() if record.status.value in _FINISHED_VALUES else ""
            args += (expiry, _compact(texts), _compact(errors) if errors else "[]")
            keys += (self._key(record.id), self._errors_key(record.id))
        for name, key, rest in commands:
            keys.append(key)
            args += (name, len(rest), *rest)
        return keys, args

    @staticmethod
    def _check_created(reply: Any, ids: Sequence[str]) -> None:
        if isinstance(reply, list):
            raise PushRefusedError(reply[0], reply[1])
        if int(reply):
            raise DuplicateJobError(ids[int(reply) - 1])

    def delete(self, job_ids: Iterable[str]) -> None:
        """Remove records (used to undo ``create`` when a publish failed)."""
        keys = [key for job_id in job_ids for key in (self._key(job_id), self._errors_key(job_id))]
        if keys:
            self._client.delete(*keys)

    def get(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id``, or ``None`` if there is none or it expired."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hgetall(self._key(job_id))
        pipe.lrange(self._errors_key(job_id), 0, -1)
        stored, errors = pipe.execute()
        if not stored:
            return None
        columns = {name: _from_text(name, text) for name, text in stored.items()}
        columns["errors"] = [json.loads(error) for error in errors]
        return record_from_columns(columns)

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
        keys: list[str] = []
        for update in updates:
            columns = update_columns(update, self.result_limit_bytes)
            error = columns.pop(ATTEMPT_ERROR, None)
            items = _items(columns)
            removed = [name for name, value in columns.items() if value is None]
            status = columns.get("status")
            expiry = "" if status is None else "-"
            if status in _FINISHED_VALUES:
                expiry = self._expiry_ms()
            appended = "" if error is None else _error_json(error)
            args += (update.job_id, update.task, update.queue, expiry)
            args += (str(len(items)), str(len(removed)), appended, *items, *removed)
            keys += (self._key(update.job_id), self._errors_key(update.job_id))
        self._apply(keys=keys, args=args)

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
        members: list[str] = self._client.zrevrange(key, 0, limit - 1)  # type: ignore[assignment]
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
        """Trim dead letters and cancellations past retention; returns how many went.

        Records need no purge: finished ones carry an ``EXPIRE``, so Redis deletes them.
        """
        cutoff = repr(float(now - self.retention_seconds))
        queues: set[str] = self._client.smembers(self._dead_queues)  # type: ignore[assignment]
        pipe = self._client.pipeline(transaction=True)
        pipe.zremrangebyscore(self._cancelled, "-inf", cutoff)
        pipe.zremrangebyscore(self._dead_all, "-inf", cutoff)
        for queue in sorted(queues):
            pipe.zremrangebyscore(self._dead_key(queue), "-inf", cutoff)
        results = pipe.execute()
        return int(results[0]) + int(results[1])

    def remove_dead_letters(self, queue: str, job_ids: Iterable[str] | None = None) -> int:
        """Remove the dead letters of ``job_ids`` in ``queue`` (all when ``None``).

        One Lua script, so an entry added meanwhile is either kept in both sorted sets or
        removed from both.
        """
        keys = [self._dead_all, self._dead_key(queue), self._dead_queues]
        if job_ids is None:
            return int(self._remove_dead(keys=keys, args=[queue, "*"]))
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return 0
        return int(self._remove_dead(keys=keys, args=[queue, "", *ids]))

    def unschedule(self, job_id: str, now: float) -> ScheduledJob | None:
        """Remove and return the entry of ``job_id`` unless a mover holds it claimed."""
        entry = self._unschedule(
            keys=[self._schedule, self._payloads], args=[job_id, repr(float(now))]
        )
        return None if entry is None else ScheduledJob(*json.loads(entry))

    def cancel(self, job_id: str, cancelled_at: float) -> None:
        """Add ``job_id`` to the cancelled ids and move their version on, atomically."""
        pipe = self._client.pipeline(transaction=True)
        pipe.zadd(self._cancelled, {job_id: cancelled_at})
        pipe.incr(self._cancel_version)
        pipe.execute()

    def uncancel(self, job_ids: Iterable[str]) -> None:
        """Remove ids from the cancelled ids (moving the version on if any was there)."""
        ids = list(job_ids)
        for start in range(0, len(ids), _UNCANCEL_CHUNK):
            chunk = ids[start : start + _UNCANCEL_CHUNK]
            self._uncancel(keys=[self._cancelled, self._cancel_version], args=chunk)

    def cancel_version_key(self, broker_url: str) -> str | None:
        """The Redis key of the cancellations' version, for a Redis broker on this store's
        own server and database (``broker_url``), else ``None``.

        A worker's Redis channel reads it in the same script that takes its messages
        (``CancelWatch``): ``cancel`` moves it on before it returns, so the value read
        there covers every cancellation made before those messages were delivered.
        """
        if not broker_url.startswith(("redis://", "rediss://")):
            return None
        return self._cancel_version if self.same_database(broker_url) else None

    def cancellations(self, known_version: int | None) -> tuple[int, frozenset[str] | None]:
        """The version of the cancelled ids, and the ids unless that is ``known_version``.

        One Lua script: the version and the ids are read together.
        """
        return self._read_cancellations(self._cancellations, known_version)

    def cancellations_quick(
        self, known_version: int | None
    ) -> tuple[int, frozenset[str] | None] | None:
        """``cancellations`` bounded to ``QUICK_READ_SECONDS``, for a worker's event loop
        (``CancelWatch``: a lone delivery then starts without a thread hop there and back,
        about half a millisecond here). ``None`` if Redis did not answer in time or the
        connection failed, and at once for ``QUICK_READ_PAUSE_SECONDS`` after that: the
        caller then reads in a thread, where a failure is raised."""
        if time.monotonic() < self._quick_paused_until:
            return None
        with self._quick_lock:  # made on first use: only workers read this way
            runner = self._quick_runner
            if runner is None:
                self._quick_client = _client(self.url, QUICK_READ_SECONDS)
                runner = ScriptRunner(self._quick_client, _CANCELLATIONS_SCRIPT)
                self._quick_runner = runner
        try:
            return self._read_cancellations(runner, known_version)
        except (redis.ConnectionError, redis.TimeoutError):
            self._quick_paused_until = time.monotonic() + QUICK_READ_PAUSE_SECONDS
            return None

    def _read_cancellations(
        self, script: Callable[..., Any], known_version: int | None
    ) -> tuple[int, frozenset[str] | None]:
        """Run the cancellations script through ``script`` (a redis-py ``Script`` or a
        ``ScriptRunner``: both take ``keys`` and ``args``) and read its reply."""
        cutoff = repr(float(time.time() - self.retention_seconds))
        known = "" if known_version is None else str(known_version)
        reply = script(keys=[self._cancelled, self._cancel_version], args=[known, cutoff])
        version = int(reply[0])
        if len(reply) == 1 and version == known_version:
            return version, None
        return version, frozenset(reply[1:])

    def close(self) -> None:
        """Close the connection pools."""
        self._create.close()
        self._apply.close()
        self._client.close()
        if self._quick_runner is not None and self._quick_client is not None:
            self._quick_runner.close()
            self._quick_client.close()
