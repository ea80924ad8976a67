"""The embedded broker: a kombu virtual transport on one SQLite file.

It needs no server, works across the processes of one machine, and loses no message when a
consumer dies. Every message is a row. A consumer *claims* a row by leasing it (one
``UPDATE … RETURNING`` statement, so two processes never claim the same row), acks by
deleting it, and hands it back by clearing the lease. A consumer that is alive keeps
extending the leases of the rows it holds from its polling loop; the rows of a consumer
that died (even by SIGKILL) become available again when their lease runs out, after at most
``visibility_timeout`` seconds. Nothing is copied on redelivery, so a message is never
duplicated by the broker itself.

kombu's own ``filesystem://`` and ``sqla+sqlite://`` transports keep unacknowledged messages
in memory only, which is why this one exists.

Use it through kombu::

    Connection(transport=Transport, transport_options={"path": "/abs/broker.sqlite3"})

Transport options (all but ``path`` optional):

- ``path``: the SQLite file; its parent folders are created. Relative paths are made
  absolute against the current folder.
- ``visibility_timeout`` (seconds, default 30): how long a claimed row stays invisible to
  other consumers without being extended.
- ``polling_interval`` (seconds, default 0.05): sleep between empty polls.
- ``busy_timeout`` (seconds, default 10): how long a statement waits for the write lock.
- ``fetch_limit`` (default 10): the most rows claimed in one statement when the channel has
  no prefetch limit; with a prefetch count, a poll claims up to the free part of it.

Publishing inside ``Channel.publish_batch()`` inserts the batch's rows with one
``executemany`` in one transaction when the block ends (its commit is the confirmation;
consumers poll, so they see the rows at their next poll, as any insert); a lone publish is
one autocommitted ``INSERT``. ``Channel.publish_many`` stores a batch of already encoded
messages the same way, one transaction, without kombu's per-message ``Producer.publish``
machinery: it writes the very envelope that path writes (routing through the channel's
own bindings, kombu's body encoding and JSON), at a fraction of the cost per message.

A consumer of several queues polls them in the order it started consuming them and takes
from the first that has messages, like the Redis transport with
``queue_order_strategy="priority"``: uno_jobs consumes its priority levels critical first.

A row that is not a message envelope kombu can read (bad JSON, a ``properties`` that is not
an object, a body that does not decode...) is deleted when it is claimed and reported to
the channel's ``on_invalid_envelope(queue, raw, problem)``, which logs it unless the
consumer sets its own; the rest of the claimed batch is delivered as usual.

Exchanges and bindings live in memory per process, as with every kombu virtual transport:
a process declares the queues it publishes to (uno_jobs always does). Publishing to an
exchange this process never declared raises, as AMQP does, instead of dropping the message.

This module is the kombu side (channel, QoS, transport, envelope checks, options); the
rows, leases and SQL are ``_embedded_table.py``'s :class:`MessageTable`, which knows
nothing of kombu.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import virtual
from kombu.utils import json as kombu_json

from uno_jobs.broker._embedded_table import MessageTable
from uno_jobs.broker._envelope import Publishable, direct_route, envelope, envelope_text
from uno_jobs.errors import ConfigurationError
from uno_jobs.message import random_uuid

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_FETCH_LIMIT",
    "DEFAULT_POLLING_INTERVAL",
    "DEFAULT_VISIBILITY_TIMEOUT",
    "DELIVERY_COUNT_KEY",
    "LEASE_OWNER_KEY",
    "ROW_ID_KEY",
    "Channel",
    "InvalidEnvelope",
    "Message",
    "Publishable",
    "QoS",
    "Transport",
]

log = logging.getLogger("uno_jobs.broker.embedded")

DEFAULT_VISIBILITY_TIMEOUT = 30.0
DEFAULT_POLLING_INTERVAL = 0.05
DEFAULT_BUSY_TIMEOUT = 10.0
DEFAULT_FETCH_LIMIT = 10
# One claim statement never takes more rows than this, whatever the prefetch window.
_MAX_FETCH = 500
_MAX_RECLAIM_INTERVAL = 1.0

# Delivery-info keys this transport adds to every message it hands out.
ROW_ID_KEY = "uno_row_id"
LEASE_OWNER_KEY = "uno_lease_owner"
DELIVERY_COUNT_KEY = "uno_delivery_count"


# kombu's virtual transport is unannotated; its classes are taken as Any so that strict
# mypy checks this module's code rather than kombu's.
_VirtualQoS: Any = virtual.QoS
_VirtualChannel: Any = virtual.Channel
_VirtualTransport: Any = virtual.Transport
_VirtualMessage: Any = virtual.Message
# kombu's JSON keeps the payload as the Redis transport stores it (bytes, dates, UUIDs).
_dumps: Callable[[Any], str] = kombu_json.dumps
_kombu_json_loads: Callable[[str], Any] = kombu_json.loads


def _loads(text: str) -> Any:
    # kombu's object hook costs a third of a delivery; only payloads that carry one of its
    # tagged values ({"__type__": ...}) need it.
    return _kombu_json_loads(text) if '"__type__"' in text else json.loads(text)


class InvalidEnvelope(Exception):
    """kombu could not make a message of a row's envelope (``problem`` says why)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _envelope_problem(payload: Any) -> str | None:
    """What makes a decoded row not an envelope kombu can make a message of, or ``None``."""
    if not isinstance(payload, dict):
        return f"the envelope is a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "the envelope has no 'properties' object"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "'properties.delivery_info' is not an object"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return f"'headers' is a {type(headers).__name__}, not an object"
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        return f"'body' is a {type(body).__name__}, not a string"
    return None


def _log_invalid_envelope(queue: str, raw: object, problem: str) -> None:
    log.error(
        "embedded broker: deleted an invalid envelope from queue %r: %s; raw: %.1000r",
        queue,
        problem,
        raw,
    )


class Message(_VirtualMessage):  # type: ignore[misc]
    """kombu's virtual message, raising :class:`InvalidEnvelope` for a row it cannot read
    (a body that is not in its ``body_encoding``, say), so that the row is dropped."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except Exception as exc:
            raise InvalidEnvelope(f"kombu cannot read it ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class _Options:
    path: str
    visibility_timeout: float
    polling_interval: float
    busy_timeout: float
    fetch_limit: int


def _number(options: Mapping[str, Any], name: str, default: float, minimum: float) -> float:
    value = options.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number >= minimum:  # NaN fails the comparison
        raise ConfigurationError(
            f"embedded broker: transport option {name!r} must be a number of at least "
            f"{minimum:g}, not {value!r}"
        )
    return number


def _parse_options(options: Mapping[str, Any]) -> _Options:
    path = options.get("path")
    if not path or not isinstance(path, (str, os.PathLike)):
        raise ConfigurationError(
            "embedded broker: transport option 'path' is required "
            "(the SQLite file that holds the queues)"
        )
    return _Options(
        path=os.path.abspath(os.path.expanduser(os.fspath(path))),
        visibility_timeout=_number(
            options, "visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT, 0.001
        ),
        polling_interval=_number(options, "polling_interval", DEFAULT_POLLING_INTERVAL, 0.0),
        busy_timeout=_number(options, "busy_timeout", DEFAULT_BUSY_TIMEOUT, 0.001),
        fetch_limit=int(_number(options, "fetch_limit", DEFAULT_FETCH_LIMIT, 1)),
    )


class QoS(_VirtualQoS):  # type: ignore[misc]
    """Prefetch accounting as kombu's, with acks and rejects done on the rows.

    ``ack`` and ``reject(requeue=False)`` delete the row; ``reject(requeue=True)`` and
    ``restore_unacked`` clear leases, so the very same row is available again at once.
    Nothing is ever re-inserted, so a handed-back message is never duplicated.
    """

    def ack(self, delivery_tag: str) -> None:
        self._settle(delivery_tag, requeue=False)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._settle(delivery_tag, requeue=requeue)
        # The base class would re-publish a copy on requeue; marking the tag done is all
        # that is left to do here.
        super().ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        """Hand back every message this channel holds: their leases are cleared."""
        self._flush()
        self._delivered.clear()
        self.channel.release_held()
        return []

    def _settle(self, delivery_tag: str, requeue: bool) -> None:
        message = self._delivered.get(delivery_tag)
        if message is None:
            return
        info = message.delivery_info
        self.channel.settle(info[ROW_ID_KEY], info.get(LEASE_OWNER_KEY), requeue=requeue)


class Channel(_VirtualChannel):  # type: ignore[misc]
    """A kombu virtual channel whose queues are rows of one SQLite table.

    Each channel has its own sqlite3 connection and a random lease-owner token; it is used
    by the thread that owns the kombu connection (acks from another thread are serialised).
    """

    QoS = QoS
    Message = Message

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        options: _Options = connection.options
        self._options = options
        self._table = MessageTable(options.path, options.busy_timeout)
        try:
            super().__init__(connection, **kwargs)
        except BaseException:
            self._table.close()
            raise
        self._owner = f"{os.getpid()}.{secrets.token_hex(6)}"
        # Delivery tags of published messages: a random UUID's first 72 bits, then a count.
        self._tag_prefix = random_uuid()[:24]
        self._tag_count = itertools.count()
        self._batch: list[tuple[str, str]] | None = None  # (queue, payload) in publish_batch
        self._held: dict[int, None] = {}  # claimed, not yet acked or handed back (ordered)
        self._no_ack_queues: set[str] = set()
        self._extend_every = options.visibility_timeout / 3
        self._next_extend = time.monotonic() + self._extend_every
        # How often a queue is swept for expired leases: this bounds how late past its
        # visibility timeout a dead consumer's message becomes available.
        self._reclaim_every = min(_MAX_RECLAIM_INTERVAL, options.visibility_timeout / 4)
        self._next_reclaim: dict[str, float] = {}
        #: Told about every row deleted as unreadable: ``(queue, raw row, problem)``.
        self.on_invalid_envelope: Callable[[str, object, str], None] = _log_invalid_envelope

    @property
    def lease_owner(self) -> str:
        """The token that marks the rows this channel has claimed."""
        return self._owner

    # -- leases ------------------------------------------------------------------------

    def extend_leases(self) -> int:
        """Push back the lease of every message this channel holds unacknowledged.

        Polling (``drain_events``, ``basic_get``) calls this every third of the visibility
        timeout; call it yourself if the owning thread stops polling for longer than that.

        Returns:
            How many leases were extended.
        """
        self._next_extend = time.monotonic() + self._extend_every
        held = list(self._held)
        if not held or self._table.closed:
            return 0
        kept = self._table.extend(held, self._owner, self._options.visibility_timeout)
        for row_id in held:
            if row_id not in kept and row_id in self._held:
                del self._held[row_id]
                log.warning(
                    "embedded broker: lost the lease of message row %d (held past the "
                    "visibility timeout without polling?); it may run twice",
                    row_id,
                )
        return len(kept)

    def release_held(self) -> int:
        """Hand back every message this channel holds; they are available again at once.

        Returns:
            How many rows were handed back.
        """
        held = list(self._held)
        self._held.clear()
        if not held or self._table.closed:
            return 0
        return self._table.release(held, self._owner)

    def release_owner(self, owner: str) -> int:
        """Make every message leased by ``owner`` (another, dead, channel) available now.

        Returns:
            How many rows were released.
        """
        return self._table.release_owner(owner)

    def settle(self, row_id: int, owner: str | None, requeue: bool) -> None:
        """Delete a row (ack, or reject without requeue) or clear its lease (requeue).

        Args:
            row_id: The message row (``delivery_info['uno_row_id']``).
            owner: The lease owner that claimed it (``delivery_info['uno_lease_owner']``).
            requeue: Clear the lease instead of deleting the row.
        """
        if self._table.closed:
            log.debug("embedded broker: ignoring a settle of row %d on a closed channel", row_id)
            return
        if requeue:
            if owner is not None:
                self._table.release([row_id], owner)
        else:
            self._table.delete(row_id)
        if owner == self._owner:
            self._held.pop(row_id, None)
            return
        # kombu may reject a message through another channel of the same connection.
        channels = self.connection.channels if self.connection is not None else []
        for channel in list(channels):
            if isinstance(channel, Channel):
                channel._held.pop(row_id, None)

    def leased_count(self, queue: str) -> int:
        """How many messages of ``queue`` are claimed by a consumer and not yet acked."""
        return self._table.count(queue, available=False)

    def _keep_leases(self) -> None:
        if self._held and time.monotonic() >= self._next_extend:
            self.extend_leases()

    # -- claiming ----------------------------------------------------------------------

    def _claim(self, queue: str, limit: int, auto_ack: bool | None = None) -> list[Any]:
        self._keep_leases()
        now = time.monotonic()
        if now >= self._next_reclaim.get(queue, 0.0):
            self._next_reclaim[queue] = now + self._reclaim_every
            reclaimed = self._table.reclaim(queue)
            if reclaimed:
                log.info("embedded broker: %d lease(s) expired on queue %r", reclaimed, queue)
        if auto_ack is None:
            auto_ack = queue in self._no_ack_queues
        if auto_ack:
            rows = self._table.take(queue, limit)
        else:
            rows = self._table.claim(queue, self._owner, self._options.visibility_timeout, limit)
        payloads = []
        for row_id, text, deliveries in rows:
            if not auto_ack:
                self._held[row_id] = None
            payload = self._decode(queue, row_id, text, deliveries, auto_ack)
            if payload is not None:
                payloads.append(payload)
        return payloads

    def _decode(self, queue: str, row_id: int, text: str, deliveries: int, auto_ack: bool) -> Any:
        try:
            payload = _loads(text)
        except (ValueError, TypeError, RecursionError) as exc:
            problem: str | None = f"not JSON ({type(exc).__name__}: {exc})"
        else:
            problem = _envelope_problem(payload)
        if problem is not None:
            self._drop_invalid(queue, row_id, text, problem)
            return None
        properties = payload["properties"]
        info = properties.setdefault("delivery_info", {})
        info[ROW_ID_KEY] = row_id
        info[LEASE_OWNER_KEY] = None if auto_ack else self._owner
        info[DELIVERY_COUNT_KEY] = deliveries
        info["redelivered"] = deliveries > 1
        # One tag per delivery, as AMQP does, so two deliveries of a row never collide.
        properties["delivery_tag"] = f"{self._owner}.{row_id}.{deliveries}"
        return payload

    def _fetch_window(self) -> int:
        free = self.qos.can_consume_max_estimate()
        limit = self._options.fetch_limit if free is None else free
        return max(1, min(limit, _MAX_FETCH))

    def _drop_invalid(self, queue: str, row_id: int, raw: object, problem: str) -> None:
        """Delete a row that can never be delivered (keeping it would stall or loop the
        queue), then report it."""
        self.settle(row_id, self._owner, requeue=False)
        self.on_invalid_envelope(queue, raw, f"row {row_id}: {problem}")

    def _hand_out(self, payloads: list[Any], queue: str, deliver: Callable[..., Any]) -> None:
        for index, payload in enumerate(payloads):
            try:
                deliver(payload, queue)
            except InvalidEnvelope as exc:
                # Raised by Message() before the message was handed to anyone.
                row_id = payload["properties"]["delivery_info"][ROW_ID_KEY]
                self._drop_invalid(queue, row_id, _dumps(payload), exc.problem)
            except BaseException:
                rest = [p["properties"]["delivery_info"][ROW_ID_KEY] for p in payloads[index + 1 :]]
                for row_id in rest:
                    self._held.pop(row_id, None)
                if rest and not self._table.closed and queue not in self._no_ack_queues:
                    self._table.release(rest, self._owner)
                raise

    # -- kombu virtual channel API -------------------------------------------------------

    def drain_events(self, timeout: float | None = None, callback: Any = None) -> None:
        """Claim up to the free prefetch window from the first non-empty queue, deliver it.

        Raises:
            queue.Empty: Nothing to consume, or the prefetch window is full.
        """
        self._keep_leases()
        if not self._consumers or not self.qos.can_consume():
            raise Empty()
        deliver = callback or self.connection._deliver
        limit = self._fetch_window()
        for queue in dict.fromkeys(self._active_queues):
            payloads = self._claim(queue, limit)
            if payloads:
                self._hand_out(payloads, queue, deliver)
                return
        raise Empty()

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        result = super().basic_cancel(consumer_tag)
        self._no_ack_queues.intersection_update(self._active_queues)
        return result

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        while True:
            payloads = self._claim(queue, 1, auto_ack=no_ack)
            if not payloads:
                return None
            try:
                message = self.Message(payloads[0], channel=self)
            except InvalidEnvelope as exc:
                row_id = payloads[0]["properties"]["delivery_info"][ROW_ID_KEY]
                self._drop_invalid(queue, row_id, _dumps(payloads[0]), exc.problem)
                continue
            if not no_ack:
                self.qos.append(message, message.delivery_tag)
            return message

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        payloads = self._claim(queue, 1)
        if not payloads:
            raise Empty()
        return payloads[0]

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        if self._batch is not None:
            self._batch.append((queue, _dumps(message)))
        else:
            self._table.put(queue, _dumps(message))

    @contextmanager
    def publish_batch(self) -> Iterator[None]:
        """Collect the messages published in the block and insert them at its end in one
        transaction: its commit is their confirmation. An error in the block inserts none.

        Raises:
            sqlite3.OperationalError: the insert failed (nothing of the batch was stored).
        """
        if self._batch is not None:
            raise RuntimeError("an embedded publish batch is open on this channel already")
        batch: list[tuple[str, str]] = []
        self._batch = batch
        try:
            yield
        finally:
            self._batch = None
        if len(batch) == 1:
            self._table.put(*batch[0])  # one autocommitted statement, no BEGIN/COMMIT
        elif batch:
            self._table.put_many(batch)

    def publish_many(
        self, messages: Sequence[tuple[str, str, Publishable]], *, delivery_mode: int = 2
    ) -> None:
        """Store ``(exchange, routing_key, message)`` messages in one transaction, in order.

        The rows are those ``Producer(channel).publish(body, exchange=..., routing_key=...,
        headers=..., content_type=..., content_encoding=..., delivery_mode=...,
        **properties)`` stores inside ``publish_batch()``: routed through this channel's
        bindings (an exchange this process never declared raises, before anything is
        written), the body in the channel's ``body_encoding``, kombu's envelope keys and
        JSON, a fresh delivery tag each. They are built here without kombu's per-message
        ``Producer`` and ``basic_publish`` work, which costs several times the insert.
        ``properties`` must not carry ``delivery_info`` (kombu fills that in).

        Raises:
            ChannelError: An exchange is not declared in this process, or is not a direct
                one (nothing of the batch was stored).
            sqlite3.OperationalError: The insert failed (nothing of the batch was stored).
        """
        routes: dict[tuple[str, str], list[str]] = {}
        rows: list[tuple[str, str]] = []
        for exchange, routing_key, message in messages:
            queues = routes.get((exchange, routing_key))
            if queues is None:
                queues = routes[(exchange, routing_key)] = self._direct_route(exchange, routing_key)
            text = envelope_text(
                envelope(self, exchange, routing_key, message, delivery_mode), message
            )
            for queue in queues:
                rows.append((queue, text))
        if self._batch is not None:  # inside publish_batch(): stored with the rest of it
            self._batch.extend(rows)
        elif rows:
            self._table.put_many(rows)

    def _direct_route(self, exchange: str, routing_key: str) -> list[str]:
        try:
            return direct_route(self, exchange, routing_key)
        except ChannelError as exc:
            raise ChannelError(f"embedded broker: publish_many {exc}") from None

    def _next_delivery_tag(self) -> str:
        # In the form of kombu's (a version-4 UUID), unique, made for less than a random
        # one: the tag stored with a row is never read back (a claim gives each delivery
        # its own, ``_decode``).
        return f"{self._tag_prefix}{next(self._tag_count) & 0xFFFF_FFFF_FFFF:012x}"

    def _size(self, queue: str) -> int:
        """Messages of ``queue`` available now (claimed ones: ``leased_count``)."""
        return self._table.count(queue, available=True)

    def _purge(self, queue: str) -> int:
        """Delete the available messages of ``queue``; claimed ones are left alone."""
        return self._table.purge(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self._table.drop_queue(queue)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self._table.declare_queue(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self._table.has_queue(queue)

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any
    ) -> None:
        # Unlike the base class, delete the rows even when this process never bound it.
        if if_empty and self._size(queue):
            return
        self._delete(queue)
        self.state.queue_bindings_delete(queue)

    def _lookup(self, exchange: str, routing_key: str, default: Any = None) -> Any:
        if exchange and exchange not in self.state.exchanges:
            # The base class would route to no queue and drop the message without a word.
            raise ChannelError(
                f"NOT_FOUND - no exchange {exchange!r} declared in this process "
                "(the embedded broker keeps bindings per process: declare the queue first)",
                (50, 10),
                "Channel.basic_publish",
                "404",
            )
        return super()._lookup(exchange, routing_key, default)

    def close(self) -> None:
        """Close the channel: cancel consumers, hand back held messages, close the file."""
        first = not self.closed
        try:
            super().close()
        finally:
            if first:
                try:
                    self.release_held()
                finally:
                    self._table.close()


class Transport(_VirtualTransport):  # type: ignore[misc]
    """The embedded broker's kombu transport (see the module docstring for its options).

    Raises:
        ConfigurationError: A transport option is missing or invalid (named in the message).
    """

    Channel = Channel
    polling_interval = DEFAULT_POLLING_INTERVAL
    driver_type = "sqlite"
    driver_name = "sqlite3"
    # "database is locked" past the busy timeout, or a file that cannot be opened: kombu's
    # retry and reconnect machinery handles these as it handles a lost socket.
    connection_errors: tuple[type[BaseException], ...] = (
        *virtual.Transport.connection_errors,
        sqlite3.OperationalError,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        self.options = _parse_options(client.transport_options or {})
        super().__init__(client, **kwargs)
        self.polling_interval = self.options.polling_interval

    def driver_version(self) -> str:
        """The version of the SQLite library in use."""
        return sqlite3.sqlite_version
