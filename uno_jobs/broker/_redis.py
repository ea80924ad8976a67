"""The Redis channel behind every ``redis://`` and ``rediss://`` broker URL.

kombu's Redis transport takes a message with ``BRPOP`` and records it as unacknowledged in
a second command, once the reply has arrived: a reply lost with its connection loses the
job, and a round trip per message (plus one per ack) caps a worker under ~1,000 jobs/s.
This channel keeps kombu's keys, message format and unacked hash and index (so Celery
producers and workers on the same Redis interoperate, and any kombu consumer's
``restore_visible`` sweep restores our messages), and changes how messages are taken,
waited for and settled.

How a message flows:

1. **Fetch.** One Lua script (``EVALSHA``; loaded once per channel with ``SCRIPT LOAD``,
   loaded again when Redis answers ``NOSCRIPT`` after a restart) atomically pops up to N
   items off the consumed lists and, for each, writes the unacked hash entry exactly as
   kombu's ``QoS.append`` does, ``[message, exchange, routing_key]`` (the item's bytes are
   copied between the brackets untouched; ``cjson`` only reads the delivery tag, exchange
   and routing key), and its ``unacked_index`` score (the client's clock, as kombu's). The
   lists are taken in order: each queue as the consumer listed them (uno_jobs' levels
   ``q.critical, q.high, q, q.low``), each with kombu's priority sub-keys. N is the free
   room of the prefetch window (``basic_qos``), at most ``FETCH_LIMIT`` (100). A reply lost
   on the way leaves its messages in the unacked index, and the sweep puts them back after
   ``visibility_timeout``: a dropped or half-open connection loses nothing. A worker whose
   job store is on the same database sets ``cancel_version_key``: the script then also
   reads the store's cancellations version, in the same atomic step, and each message
   carries it (``Message.cancel_version``; the worker's ``CancelWatch`` skips its store
   read when it is the version it holds).
2. **Deliver.** The items go to the ``basic_consume`` callbacks; ``QoS.append`` keeps only
   kombu's in-memory bookkeeping for them, since their entries exist already.
3. **Wait.** After an empty fetch the poll connection blocks with ``BLMOVE key key RIGHT
   RIGHT timeout`` on one list: the normal level (the queue whose name the others extend)
   or else the first one. Moving the tail item back to the tail takes nothing; the command
   returns as soon as the list has an item, and a fetch follows. With more than one list
   to watch (always, given kombu's four priority sub-keys per queue) it times out after
   ``IDLE_CHECK_SECONDS`` (50 ms) and fetches anyway: an idle channel starts a job on
   another level or sub-key at most ~50 ms plus a round trip late, a normal-level job at
   once, for two small commands per 50 ms. With a single list it waits ``brpop_timeout``
   (1 s). Both commands go through kombu's ``MultiChannelPoller`` (sent in
   ``_brpop_start``, read in ``_brpop_read``), so its health check (a reply overdue by
   ``brpop_timeout + health_check_interval`` drops the connection) and its
   ``restore_visible`` calls keep working. The sweep runs at most every
   ``unacked_restore_interval`` seconds per channel, and also from a channel that is busy.
4. **Settle.** ``basic_ack_many`` removes a round's acks from the unacked hash and index in
   one pipeline (the consumer thread flushes its acks with it). A single ``basic_ack`` or
   ``basic_reject`` is kombu's: with ``requeue`` the message goes back through kombu's
   ``restore_by_tag(leftmost=True)``, to the end of its list that is read last.
5. **Hand back.** Fetched items nobody received (a fetch reply still on its way when the
   channel closes, a queue whose consumer was cancelled meanwhile, a callback that
   raised) go back to the front of their lists as they were, unless a sweep or an ack
   settled them first.

Publishing is kombu's, batched and with cached binding tables: ``_redis_publish.py``.

``basic_get`` takes its message with the same script. An item that is not a kombu envelope
(not JSON, no ``properties.delivery_tag``, a body kombu cannot read) is removed and reported
to ``Channel.on_invalid_envelope(queue, raw, problem)``, which logs it unless the consumer
sets its own; the rest of the batch is delivered as usual. Leases (``ZADD XX`` on the
unacked index for held messages) are renewed by the consumer thread (``keep_leases``).

**Owner sets.** Each channel has an owner id (``lease_owner``, random per channel: a
worker restarted with the same worker id gets a new one). The fetch script adds each tag
it records to the channel's owner set, ``<global prefix><unacked_key>_owner:<owner>``
(``unacked_owner:<owner>`` with kombu's default names), in the same atomic step; ack,
forget, hand-back and kombu's own ``_remove_from_indices`` (reject, requeue) take it out
again, so the set holds at most the channel's in-flight messages. ``restore_owner`` makes
a dead channel's messages deliverable at once, also those fetched after the last thing it
reported: the cluster coordinator calls it through ``Broker.restore_unacked``. The set
expires ``OWNER_TTL_FACTOR`` visibility timeouts after the last fetch or lease renewal:
by then kombu's sweep has restored whatever a dead channel held. A tag the sweep restores
stays in its old owner's set until then (nothing tells the set); if that owner dies while
another consumer holds the message again, ``restore_owner`` delivers it once more, which
can only follow a lease that lapsed, itself a redelivery.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils import json as kombu_json
from redis.exceptions import NoScriptError

from uno_jobs.broker._redis_publish import PublishChannel
from uno_jobs.broker._redis_scripts import FETCH_SCRIPT, HAND_BACK_SCRIPT, RESTORE_OWNER_SCRIPT

__all__ = ["FETCH_LIMIT", "IDLE_CHECK_SECONDS", "OWNER_TTL_FACTOR", "Channel", "QoS", "Transport"]

log = logging.getLogger("uno_jobs.broker.redis")

#: The most messages one fetch takes (it also bounds how long the script holds Redis).
FETCH_LIMIT = 100
#: How long an idle channel blocks on one list before it checks all of them.
IDLE_CHECK_SECONDS = 0.05
#: An owner set lives this many visibility timeouts after its last fetch or lease renewal.
OWNER_TTL_FACTOR = 2
# How long ``close`` waits for the reply of a fetch on its way, to hand its items back.
_CLOSE_READ_SECONDS = 1.0

_kombu_loads: Callable[[str], Any] = kombu_json.loads


def _loads(text: str) -> Any:
    # kombu's object hook costs a third of a delivery; only payloads that carry one of its
    # tagged values ({"__type__": ...}) need it.
    return _kombu_loads(text) if '"__type__"' in text else json.loads(text)


def _log_invalid_envelope(queue: str, raw: object, problem: str) -> None:
    log.error(
        "redis: dropped an invalid envelope from queue %r: %s; raw: %.1000r", queue, problem, raw
    )


def _version_of(raw: Any) -> int | None:
    """A fetch's reading of the cancellations version; ``None`` for a value that is not a
    count (the store only ever ``INCR``s it): the worker then reads the store itself."""
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


class _UnreadableEnvelope(Exception):
    """kombu could not make a message of an envelope (``problem`` says why)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class Message(virtual.Message):
    """kombu's virtual message, raising ``_UnreadableEnvelope`` for an envelope it cannot
    read (a body that is not in its ``body_encoding``, say), so that it is dropped.

    ``cancel_version``: the job store's cancellations version read by the fetch that took
    the message (``Channel.cancel_version_key``), else ``None``.
    """

    cancel_version: int | None

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except Exception as exc:
            raise _UnreadableEnvelope(
                f"kombu cannot read it ({type(exc).__name__}: {exc})"
            ) from exc
        self.cancel_version = getattr(channel, "_delivering_version", None)


@dataclass(frozen=True, slots=True)
class _Sent:
    """The command in flight on the poll connection."""

    fetch: bool  # the fetch script; else BLMOVE
    keys: tuple[str, ...]  # the lists (full key names), in fetch order
    queues: tuple[str, ...]  # the queue of each list


@dataclass(frozen=True, slots=True)
class _Fetched:
    """One item the fetch script took and recorded as unacknowledged."""

    queue: str
    key: str
    tag: str
    payload: Any
    raw: bytes


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, for messages the fetch script has recorded already."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    def append(self, message: Any, delivery_tag: str) -> None:
        recorded: set[str] = self.channel.connection.recorded_tags
        if delivery_tag in recorded:
            recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack_many(self, delivery_tags: Sequence[str]) -> None:
        """Acknowledge several messages with one pipeline."""
        self.forget(delivery_tags)
        for tag in delivery_tags:
            virtual.QoS.ack(self, tag)

    def forget(self, delivery_tags: Sequence[str]) -> None:
        """Remove unacked entries (hash, index and owner set) in one round trip."""
        if not delivery_tags:
            return
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline()
            pipe.zrem(self.unacked_index_key, *delivery_tags)
            pipe.hdel(self.unacked_key, *delivery_tags)
            pipe.srem(self.channel.owner_key, *delivery_tags)
            pipe.execute()

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        """kombu's (single ack, reject, restore), also leaving this channel's owner set. For
        another owner's tag (kombu's sweep restoring it) the ``SREM`` changes nothing."""
        with self.pipe_or_acquire(pipe) as pipe:
            return (
                pipe.zrem(self.unacked_index_key, delivery_tag)
                .hdel(self.unacked_key, delivery_tag)
                .srem(self.channel.owner_key, delivery_tag)
            )

    def restore_visible(self, start: int = 0, num: int | None = 10, interval: int = 10) -> None:
        """kombu's sweep, at most every ``unacked_restore_interval`` seconds."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + float(self.channel.unacked_restore_interval)
        super().restore_visible(start, num, interval)


class Channel(PublishChannel):
    """kombu's Redis channel, taking messages with the fetch script (module docstring),
    publishing batches in one pipeline (``PublishChannel``, ``_redis_publish.py``)."""

    QoS = QoS
    Message = Message
    # kombu's: the connection a command is in flight on, and when it was sent.
    _in_poll: Any = False
    _brpop_sent_at: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sent: _Sent | None = None
        self._idle = False  # the last fetch came back empty: wait before the next one
        self._fetch_sha: str | None = None
        self._owner = f"{os.getpid()}.{secrets.token_hex(6)}"
        #: A job store's cancellations version key (full name) the fetch reads with its
        #: pops (``RedisStore.cancel_version_key``); each message then carries the value.
        self.cancel_version_key: str | None = None
        self._delivering_version: int | None = None
        #: Told about every item dropped as unreadable: ``(queue, raw item, problem)``.
        self.on_invalid_envelope: Callable[[str, object, str], None] = _log_invalid_envelope
        super().__init__(*args, **kwargs)

    # -- ownership ---------------------------------------------------------------------

    @property
    def lease_owner(self) -> str:
        """This channel's owner id: its fetched messages are in ``owner_key``."""
        return self._owner

    @property
    def owner_key(self) -> str:
        """This channel's owner set (without the global key prefix, as kombu's keys)."""
        return self.owner_key_of(self._owner)

    def owner_key_of(self, owner: str) -> str:
        """The owner set of ``owner`` (without the global key prefix)."""
        return f"{self.unacked_key}_owner:{owner}"

    @property
    def _owner_ttl_ms(self) -> int:
        return max(1000, int(float(self.visibility_timeout) * OWNER_TTL_FACTOR * 1000))

    def keep_leases(self, delivery_tags: Sequence[str]) -> None:
        """Refresh the unacked index entries of held messages (those still there) and the
        owner set's expiry, in one round trip."""
        if not delivery_tags:
            return
        stamp = time.time()
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            pipe.zadd(self.unacked_index_key, dict.fromkeys(delivery_tags, stamp), xx=True)
            pipe.pexpire(self.owner_key, self._owner_ttl_ms)
            pipe.execute()

    def restore_owner(self, owner: str) -> int:
        """Make every message the channel ``owner`` (a dead one) holds deliverable now.

        Each message still in the unacked hash goes back to the front of its list as
        kombu's ``restore_by_tag`` puts it (marked redelivered, routed by its exchange,
        kombu's priority sub-key), and leaves the hash and index, in one script; those
        acked or restored meanwhile are skipped. The owner set is emptied.

        Returns:
            How many messages were restored.
        """
        if not owner:
            raise ValueError("restore_owner: the owner id is empty")
        client = self._plain_client()
        prefix = self.global_keyprefix
        owner_key = prefix + self.owner_key_of(owner)
        tags = sorted(t.decode() for t in client.smembers(owner_key))
        if not tags:
            return 0
        entries = client.hmget(prefix + self.unacked_key, tags)
        keys = [prefix + self.unacked_key, prefix + self.unacked_index_key, owner_key]
        pushes: list[Any] = []
        for tag, entry in zip(tags, entries, strict=True):
            if entry is None:
                continue  # acked, or restored by a sweep: the SREM below drops it
            recorder = _Pushes()
            payload, exchange, routing_key = kombu_json.loads(entry.decode())
            self._do_restore_message(payload, exchange, routing_key, recorder)
            for key, message in recorder.pushes:
                keys.append(prefix + key)
                pushes += (tag, message)
        return int(client.eval(RESTORE_OWNER_SCRIPT, len(keys), *keys, *pushes, *tags))

    # -- settling ----------------------------------------------------------------------

    def basic_ack_many(self, delivery_tags: Sequence[str]) -> None:
        """Acknowledge several messages in one round trip."""
        self.qos.ack_many(delivery_tags)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Take one message of ``queue`` with the fetch script, or ``None``."""
        keys, queues = self._lists([queue])
        while True:
            reply = self._fetch_now(keys, queues, 1)
            if not reply:
                return None
            fetched = self._parse(reply, keys, queues)
            if not fetched:
                continue
            item = fetched[0]
            try:
                message = self.Message(item.payload, channel=self)
            except _UnreadableEnvelope as exc:
                self.qos.forget([item.tag])
                self.on_invalid_envelope(item.queue, item.raw, exc.problem)
                continue
            if no_ack:
                self.qos.forget([item.tag])
            else:
                virtual.QoS.append(self.qos, message, item.tag)
            return message

    # -- polling: kombu's MultiChannelPoller sends with _brpop_start, reads with _brpop_read

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self.active_queues
        if not queues:
            return
        self._sweep()
        keys, owners = self._lists(queues)
        if not self._idle:
            self._send_fetch(keys, owners)
            return
        wait_key = self.global_keyprefix + self._wait_queue(queues)
        if len(keys) > 1:
            timeout = IDLE_CHECK_SECONDS
        elif timeout is None:
            timeout = self.brpop_timeout
        self._send(
            _Sent(False, keys, owners),
            "BLMOVE",
            wait_key,
            wait_key,
            "RIGHT",
            "RIGHT",
            f"{timeout or 0:g}",
        )

    def _brpop_read(self, **options: Any) -> bool:
        sent, self._sent = self._sent, None
        connection = self.client.connection
        try:
            reply = connection.read_response()
        except NoScriptError:
            self._in_poll = None
            self._fetch_sha = None  # Redis restarted (or its scripts were flushed)
            if sent is not None and sent.fetch:
                self._send_fetch(sent.keys, sent.queues)
            raise Empty() from None
        except self.connection_errors:
            connection.disconnect()
            raise
        finally:
            if self._sent is None:
                self._in_poll = None
        if sent is None:
            raise Empty()
        if not sent.fetch:
            if reply is not None or len(sent.keys) > 1:
                self._idle = False
                self._send_fetch(sent.keys, sent.queues)
            raise Empty()
        self._flush_brpop_reauth()
        self._idle = not reply
        if not reply:
            raise Empty()
        version = _version_of(reply[-1]) if len(reply) % 3 else None
        self._hand_out(self._parse(reply, sent.keys, sent.queues), version)
        return True

    def close(self) -> None:
        sent, connection = self._sent, self._in_poll
        self._sent = None
        self._in_poll = None  # kombu's close would read the reply and deliver it
        if sent is not None and sent.fetch and connection:
            self._hand_back_unread(connection, sent)
        super().close()

    # -- the fetch ---------------------------------------------------------------------

    def _send(self, sent: _Sent, *command: Any) -> None:
        connection = self.client.connection
        self._sent = sent
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        connection.send_command(*command)

    def _send_fetch(self, keys: tuple[str, ...], queues: tuple[str, ...]) -> None:
        sha = self._script_sha()
        self._send(_Sent(True, keys, queues), "EVALSHA", sha, *self._fetch_args(keys, queues))

    def _fetch_now(self, keys: tuple[str, ...], queues: tuple[str, ...], limit: int) -> Any:
        """Run the fetch script on a pooled connection and return its reply."""
        client = self._plain_client()
        args = self._fetch_args(keys, queues, limit)
        try:
            return client.evalsha(self._script_sha(), *args)
        except NoScriptError:
            self._fetch_sha = None
            return client.evalsha(self._script_sha(), *args)

    def _fetch_args(
        self, keys: tuple[str, ...], queues: tuple[str, ...], limit: int | None = None
    ) -> list[Any]:
        if limit is None:
            room = self.qos.can_consume_max_estimate()
            limit = FETCH_LIMIT if room is None else max(1, min(room, FETCH_LIMIT))
        prefix = self.global_keyprefix
        extra = () if self.cancel_version_key is None else (self.cancel_version_key,)
        return [
            len(keys) + len(extra) + 3,
            prefix + self.unacked_key,
            prefix + self.unacked_index_key,
            prefix + self.owner_key,
            *keys,
            *extra,
            limit,
            repr(time.time()),
            self._owner_ttl_ms,
            *queues,
        ]

    def _script_sha(self) -> str:
        if self._fetch_sha is None:
            self._fetch_sha = str(self._plain_client().script_load(FETCH_SCRIPT))
        return self._fetch_sha

    def _plain_client(self) -> Any:
        """A client on the channel's pool that adds no key prefix (keys are given whole)."""
        return redis.Redis(connection_pool=self.pool)

    def _lists(self, queues: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The lists of ``queues`` (full key names) in fetch order, and the queue of each."""
        lists: dict[str, str] = {}
        for queue in queues:
            for step in self.priority_steps:
                lists.setdefault(self.global_keyprefix + self._q_for_pri(queue, step), queue)
        return tuple(lists), tuple(lists.values())

    @staticmethod
    def _wait_queue(queues: Sequence[str]) -> str:
        """The queue to block on: the one whose name every other extends, else the first."""
        for queue in queues:
            if all(other == queue or other.startswith(f"{queue}.") for other in queues):
                return queue
        return queues[0]

    def _sweep(self) -> None:
        try:
            self.qos.restore_visible(
                num=self.unacked_restore_limit, interval=self.unacked_restore_throttle
            )
        except self.connection_errors:
            log.debug("restore_visible: connection error, will retry", exc_info=True)

    # -- handing items out and back ------------------------------------------------------

    def _parse(
        self, reply: Sequence[Any], keys: tuple[str, ...], queues: tuple[str, ...]
    ) -> list[_Fetched]:
        """The items of a fetch reply (without the version that may end it); those that
        cannot be read are dropped and reported."""
        fetched: list[_Fetched] = []
        unreadable: list[str] = []
        for i in range(0, len(reply) - len(reply) % 3, 3):
            position, tag, raw = int(reply[i]), reply[i + 1].decode(), reply[i + 2]
            key, queue = keys[abs(position) - 1], queues[abs(position) - 1]
            if position < 0:
                problem = "not a kombu message envelope (no properties.delivery_tag)"
                self.on_invalid_envelope(queue, raw, problem)
                continue
            try:
                payload = _loads(raw.decode("utf-8"))
                if payload["properties"]["delivery_tag"] != tag:
                    raise ValueError(f"its delivery tag does not read as {tag!r}")
            except (ValueError, KeyError, TypeError) as exc:
                # Lua's cjson read it, Python's JSON parser does not (bad UTF-8, say).
                unreadable.append(tag)
                self.on_invalid_envelope(queue, raw, f"{type(exc).__name__}: {exc}")
                continue
            fetched.append(_Fetched(queue, key, tag, payload, raw))
        self.qos.forget(unreadable)
        return fetched

    def _hand_out(self, fetched: list[_Fetched], cancel_version: int | None = None) -> None:
        """Deliver fetched items to the consumers; hand back what nobody received.

        ``cancel_version``: the fetch's reading of ``cancel_version_key``, given to each
        message made meanwhile (``Message.cancel_version``)."""
        transport = self.connection
        self._delivering_version = cancel_version
        recorded: set[str] = transport.recorded_tags
        unwanted: list[_Fetched] = []  # their queue has no consumer (any more)
        forget: list[str] = []  # unreadable, or taken by a consumer that does not ack
        try:
            for n, item in enumerate(fetched):
                if item.queue not in transport._callbacks:
                    unwanted.append(item)
                    continue
                recorded.add(item.tag)
                try:
                    transport._deliver(item.payload, item.queue)
                except _UnreadableEnvelope as exc:
                    self.on_invalid_envelope(item.queue, item.raw, exc.problem)
                except BaseException:
                    rest = fetched[n + 1 :]
                    if item.tag in recorded:  # it never reached QoS.append
                        recorded.discard(item.tag)
                        rest = [item, *rest]
                    unwanted += rest
                    raise
                if item.tag in recorded:
                    recorded.discard(item.tag)
                    forget.append(item.tag)
        finally:
            self._delivering_version = None
            self.qos.forget(forget)
            if unwanted:
                self._hand_back(unwanted)

    def _hand_back(self, items: Sequence[_Fetched]) -> None:
        """Put fetched items back at the front of their lists, as they were."""
        prefix = self.global_keyprefix
        keys = [prefix + self.unacked_key, prefix + self.unacked_index_key, prefix + self.owner_key]
        keys += [item.key for item in items]
        args = [value for item in items for value in (item.tag, item.raw)]
        self._plain_client().eval(HAND_BACK_SCRIPT, len(keys), *keys, *args)

    def _hand_back_unread(self, connection: Any, sent: _Sent) -> None:
        """Read a fetch reply on its way at close and hand its items back; if it does not
        come, the sweep restores them after ``visibility_timeout``."""
        try:
            if connection._sock is None or not connection.can_read(timeout=_CLOSE_READ_SECONDS):
                return
            reply = connection.read_response()
            if reply:
                fetched = self._parse(reply, sent.keys, sent.queues)
                self._hand_back(fetched)
        except Exception:
            log.debug("handing back a fetch at close failed", exc_info=True)


class _Pushes:
    """Stands in for the pipeline kombu's ``_do_restore_message`` pushes a message with,
    recording ``(list, message)`` instead, for ``restore_owner``'s script."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str]] = []

    def rpush(self, key: str, value: str) -> _Pushes:
        self.pushes.append((key, value))
        return self

    lpush = rpush


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the reliable, batched channel above."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Tags the fetch script recorded as unacked, on their way to ``QoS.append``.
        self.recorded_tags: set[str] = set()
