"""Publishing: pooled sessions, topology declared once, publisher confirms on AMQP.

On RabbitMQ a publish returns only after the broker confirmed it. kombu's
``confirm_publish`` waits for each message in turn; a batch here is published first and
its confirms are then awaited together (the channel's own ``confirm_select`` and
``basic_ack`` events, ``multiple`` acks included), under one deadline. On Redis the
LPUSH reply is the confirmation, on the embedded broker the SQLite commit; there the
channel sends a whole batch at once, in one pipeline (``_redis_publish.py``) or one
``executemany`` transaction (the embedded channel's ``publish_many``, which builds the
envelopes kombu's ``Producer.publish`` would, without its per-message work).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from amqp.exceptions import RecoverableConnectionError
from kombu.connection import Connection
from kombu.exceptions import OperationalError
from kombu.messaging import Producer

from uno_jobs.broker._amqp import buffer_reads, set_socket_timeout
from uno_jobs.broker._amqp_frames import publish_frames
from uno_jobs.broker._spec import BrokerSpec
from uno_jobs.broker._sqs import SqsSizes
from uno_jobs.broker._topology import kombu_queue
from uno_jobs.errors import BrokerUnavailableError, PayloadError
from uno_jobs.message import Encoded

__all__ = ["CapturedCommands", "Outgoing", "PublishSession", "Publisher", "UncapturableError"]

log = logging.getLogger("uno_jobs.broker")

_T = TypeVar("_T")

#: Commands of a captured Redis publish: (name, key as in Redis, the other arguments).
CapturedCommands = list[tuple[str, str, tuple[Any, ...]]]


class UncapturableError(Exception):
    """A publish cannot be handed out as Redis commands (``PublishSession.capture``)."""


_CLOSE_TIMEOUT_SECONDS = 1.0
#: Frames of a RabbitMQ batch gathered before a socket write.
_WRITE_BYTES = 65536


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish to the broker queue ``routing_key``.

    ``delay_seconds``: whole seconds the broker itself holds the message back (SQS's
    ``DelaySeconds``, see ``BrokerSpec.delay_seconds``); only SQS takes one.
    """

    routing_key: str
    encoded: Encoded
    delay_seconds: int | None = None

    def wire_encoded(self) -> Encoded:
        """The message as published: with a delay, kombu's SQS channel reads it from the
        ``DelaySeconds`` property (and keeps it in the envelope it sends, so it counts
        towards the message's size)."""
        if not self.delay_seconds:
            return self.encoded
        properties = {**self.encoded.properties, "DelaySeconds": self.delay_seconds}
        return dataclasses.replace(self.encoded, properties=properties)


class _Confirms:
    """Tracks publisher-confirm sequence numbers of one AMQP channel."""

    def __init__(self, channel: Any) -> None:
        self.sent = 0
        self.pending: set[int] = set()
        self.nacked: set[int] = set()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.pending = {t for t in self.pending if t > tag}
        else:
            self.pending.discard(tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        done = {t for t in self.pending if t <= tag} if multiple else {tag}
        self.nacked |= done & self.pending
        self.pending -= done

    def next_tag(self) -> int:
        self.sent += 1
        self.pending.add(self.sent)
        return self.sent


class PublishSession:
    """A connection and channel used by one thread at a time to publish."""

    def __init__(self, spec: BrokerSpec, connection: Connection | None = None) -> None:
        self.spec = spec
        self._conn = connection or spec.connection()
        self._own_conn = connection is None
        self._declared: set[str] = set()
        self._channel: Any = None
        self._producer: Producer | None = None
        self._confirms: _Confirms | None = None
        self._sqs_sizes = SqsSizes() if spec.kind == "sqs" else None

    def _ensure(self) -> Producer:
        if self._producer is None:
            self._conn.ensure_connection(max_retries=1, timeout=self.spec.connect_timeout)
            self._channel = self._conn.channel()
            if self.spec.kind == "amqp":
                if self._own_conn:
                    buffer_reads(self._conn)
                self._confirms = _Confirms(self._channel)
            self._producer = Producer(self._channel)
        return self._producer

    def forget(self, names: Sequence[str]) -> None:
        """Declare these queues again before the next publish to them (they were deleted;
        declaring binds them again, which also drops a Redis channel's cached bindings;
        on SQS the connection's cached queue URLs and sizes of them go too)."""
        self._declared.difference_update(names)
        if self._sqs_sizes is not None and self._channel is not None:
            self._sqs_sizes.forget(self._channel, names)

    def declare(self, name: str) -> None:
        if name in self._declared:
            return
        self._ensure()
        kombu_queue(name)(self._channel).declare()
        self._declared.add(name)

    def publish(
        self, items: Sequence[Outgoing], while_confirming: Callable[[], None] | None = None
    ) -> None:
        """Publish ``items``; on AMQP return once all are confirmed.

        ``while_confirming`` runs once the messages are sent, while the broker's confirms
        are on their way (on AMQP; elsewhere after the publish). If it raises, the confirms
        are still awaited (the channel stays usable) and then its error is raised.

        Raises:
            BrokerUnavailableError: the broker is unreachable, refused a message, or did
                not confirm within ``confirm_timeout``.
        """
        failure: BaseException | None = None
        with self._failures():
            producer, wire = self._start(items)
            if self.spec.kind == "embedded" and len(wire) > 1:
                # The envelopes kombu's Producer would store, built and inserted at once.
                self._channel.publish_many([(key, key, enc) for key, enc in wire])
            else:
                self._publish_each(producer, wire)
            if while_confirming is not None:
                try:
                    while_confirming()
                except BaseException as exc:  # reported after the confirms
                    failure = exc
            self._wait_for_confirms()
        if failure is not None:
            raise failure

    def capture(self, items: Sequence[Outgoing]) -> CapturedCommands:
        """The Redis commands that would publish ``items``, for the caller to send
        (``PublishChannel.capture``); queues are declared, nothing else is sent.

        Raises:
            UncapturableError: not a Redis broker, or a message needs another command.
            BrokerUnavailableError: declaring a queue failed on a connection problem.
        """
        if self.spec.kind != "redis":
            raise UncapturableError(f"broker {self.spec.display} is not Redis")
        with self._failures():
            _, wire = self._start(items)
            captured: CapturedCommands = self._channel.capture(wire)
        return captured

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """What a publish or capture that failed leaves: an error in what was asked for
        (a payload too large, a message that cannot be captured) keeps the session, as
        nothing was sent; anything else closes it, a connection problem raised as
        ``BrokerUnavailableError`` naming the broker."""
        try:
            yield
        except (PayloadError, UncapturableError):
            raise
        except BrokerUnavailableError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            if _is_connection_problem(self._conn, exc):
                raise BrokerUnavailableError(self.spec.display, _describe(exc)) from None
            raise

    def _start(self, items: Sequence[Outgoing]) -> tuple[Producer, list[tuple[str, Encoded]]]:
        """Connect, declare the queues of ``items`` and check them: what a publish sends."""
        self._check_delays(items)
        producer = self._ensure()
        for name in dict.fromkeys(item.routing_key for item in items):
            self.declare(name)
        wire = [(item.routing_key, item.wire_encoded()) for item in items]
        if self._sqs_sizes is not None:
            self._sqs_sizes.check(self._channel, wire)
        return producer, wire

    @staticmethod
    def _publish_one(producer: Producer, routing_key: str, enc: Encoded) -> None:
        producer.publish(
            enc.body,
            exchange=routing_key,
            routing_key=routing_key,
            headers=enc.headers,
            content_type=enc.content_type,
            content_encoding=enc.content_encoding,
            delivery_mode=2,
            **enc.properties,
        )

    def _publish_each(self, producer: Producer, wire: Sequence[tuple[str, Encoded]]) -> None:
        """Publish message by message. On RabbitMQ the session writes the frames itself
        (``_amqp_frames``), up to ``_WRITE_BYTES`` of them per socket write, and a message
        they cannot carry goes through kombu's ``Producer`` after the ones before it. On
        Redis inside the channel's ``publish_batch()``: it sends them at the end of the
        block in one pipeline, and raises if any of them was refused; a lone message goes
        that way too (on the channel's kept client: kombu makes one per command). A lone
        embedded message is one autocommitted INSERT."""
        batch: AbstractContextManager[Any] = (
            self._channel.publish_batch() if self.spec.kind == "redis" else nullcontext()
        )
        direct = self._confirms is not None and self._own_conn
        unwritten: list[bytes] = []
        size = 0
        with batch:
            for routing_key, enc in wire:
                frames = self._frames(routing_key, enc) if direct else None
                if frames is None:
                    self._write(unwritten)
                    size = 0
                    self._publish_one(producer, routing_key, enc)
                else:
                    unwritten.append(frames)
                    size += len(frames)
                    if size >= _WRITE_BYTES:
                        self._write(unwritten)
                        size = 0
                if self._confirms is not None:
                    self._confirms.next_tag()
            self._write(unwritten)

    def _frames(self, routing_key: str, enc: Encoded) -> bytes | None:
        """An AMQP publish's frames as py-amqp would write them (``_amqp_frames``), or
        ``None`` when they cannot be built exactly (kombu publishes that message) or
        the channel has lost its connection (kombu's publish raises for that)."""
        amqp_conn = self._channel.connection
        if amqp_conn is None:
            return None
        return publish_frames(
            self._channel.channel_id,
            routing_key,
            routing_key,
            enc.body,
            enc.headers,
            enc.content_type,
            enc.content_encoding,
            enc.properties,
            amqp_conn.frame_max,
        )

    def _write(self, unwritten: list[bytes]) -> None:
        """Write (and clear) frames built by ``_frames``, in one socket write. Only on the
        session's own connection: py-amqp's frame writer serialises the writes of threads
        sharing a connection with a lock of its own, which this cannot take."""
        if not unwritten:
            return
        # The channel's own py-amqp connection: kombu's ``connection`` property would
        # open a new one if this one were closed.
        amqp_conn = self._channel.connection
        transport = amqp_conn.transport if amqp_conn is not None else None
        if transport is None:
            raise RecoverableConnectionError("connection already closed")
        data = unwritten[0] if len(unwritten) == 1 else b"".join(unwritten)
        unwritten.clear()
        transport.write(data)
        amqp_conn.bytes_sent += 1  # py-amqp counts its writes so (heartbeats)

    def _check_delays(self, items: Sequence[Outgoing]) -> None:
        """A broker-held delay on a broker that cannot hold one is a bug of the caller:
        the message would arrive at once, before its time."""
        for item in items:
            if item.delay_seconds and self.spec.delay_seconds(item.routing_key, 1) is None:
                raise ValueError(
                    f"broker {self.spec.display}: queue {item.routing_key!r} cannot hold a "
                    f"message back ({item.delay_seconds} s asked); delays of this broker "
                    "wait in the job store's schedule"
                )

    def _wait_for_confirms(self) -> None:
        confirms = self._confirms
        if confirms is None:
            return
        deadline = time.monotonic() + self.spec.confirm_timeout
        while confirms.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(
                    self.spec.display,
                    f"{len(confirms.pending)} publish(es) not confirmed within "
                    f"{self.spec.confirm_timeout:g} s (broker down or blocking publishers?)",
                )
            try:
                self._conn.drain_events(timeout=min(remaining, 1.0))
            except TimeoutError:
                continue
        if confirms.nacked:
            count = len(confirms.nacked)
            confirms.nacked.clear()
            raise BrokerUnavailableError(self.spec.display, f"broker refused {count} message(s)")

    def close(self) -> None:
        self._producer = None
        self._confirms = None
        self._declared.clear()
        if self._own_conn and self.spec.kind == "amqp":
            # The close handshake must not wait forever on a broker that stopped answering.
            set_socket_timeout(self._conn, _CLOSE_TIMEOUT_SECONDS)
        channel, self._channel = self._channel, None
        try:
            if channel is not None:
                channel.close()
        except Exception:
            log.debug("closing a publish channel failed", exc_info=True)
        if self._own_conn:
            try:
                self._conn.release()
            except Exception:
                log.debug("closing a publish connection failed", exc_info=True)
            self._conn = self.spec.connection()


class Publisher:
    """A thread-safe pool of ``PublishSession``s for one broker."""

    def __init__(self, spec: BrokerSpec, max_sessions: int = 8) -> None:
        self.spec = spec
        self._free: list[PublishSession] = []
        self._sessions: list[PublishSession] = []  # every session, free or in use
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_sessions)

    def publish(
        self, items: Sequence[Outgoing], while_confirming: Callable[[], None] | None = None
    ) -> None:
        """Publish ``items`` in one batch (confirmed together on AMQP; see
        ``PublishSession.publish`` for ``while_confirming``)."""
        if not items:
            if while_confirming is not None:
                while_confirming()
            return
        self._with_session(lambda session: session.publish(items, while_confirming))

    def capture(self, items: Sequence[Outgoing]) -> CapturedCommands:
        """The Redis commands that would publish ``items`` (``PublishSession.capture``)."""
        return self._with_session(lambda session: session.capture(items))

    def _with_session(self, call: Callable[[PublishSession], _T]) -> _T:
        if not self._slots.acquire(timeout=self.spec.confirm_timeout):
            raise BrokerUnavailableError(self.spec.display, "no free publish session")
        try:
            with self._lock:
                session = self._free.pop() if self._free else None
            if session is None:
                session = PublishSession(self.spec)
                with self._lock:
                    self._sessions.append(session)
            try:
                return call(session)
            finally:
                with self._lock:
                    self._free.append(session)
        finally:
            self._slots.release()

    def forget(self, names: Sequence[str]) -> None:
        """Every session declares these queues again before publishing to them."""
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.forget(names)

    def close(self) -> None:
        with self._lock:
            sessions, self._free = self._free, []
            self._sessions = []
        for session in sessions:
            session.close()


def _is_connection_problem(conn: Connection, exc: BaseException) -> bool:
    errors = tuple(conn.connection_errors) + tuple(conn.channel_errors)
    return isinstance(exc, (*errors, OperationalError, OSError, socket.timeout, TimeoutError))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
