"""One pass over a dead-letter queue: take its messages, re-publish them, then ack.

Requeueing one dead letter must leave the others in ``q.dead``, in order, and lose nothing
if the process dies half way. Brokers cannot take a message out of the middle of a queue,
so a ``QueueSweep`` reads the queue from its head (``basic_get``, unacknowledged) and the
caller says, batch by batch, where each message goes: back to the tail of the same queue
(kept), to another queue (moved), or nowhere (dropped). ``settle`` publishes the batch —
confirmed on RabbitMQ — and only then acks the messages it came from, so a crash leaves a
duplicate, never a loss. A pass takes no more messages than the queue held when it began,
so what it published back is not read again.

SQS hands a message out again once its visibility timeout has run out, even to the pass
that holds it: a pass slower than that timeout would take such a message twice and
publish it twice. Each SQS message taken is known by its ``MessageId``; one that comes
again is only acked (with the new receipt handle) when its batch settles.

Nothing else may consume the queue during a pass: workers never consume ``q.dead``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from kombu.connection import Connection

from uno_jobs.broker._publisher import Outgoing, PublishSession, _describe, _is_connection_problem
from uno_jobs.broker._spec import BrokerSpec
from uno_jobs.broker._topology import kombu_queue
from uno_jobs.errors import BrokerUnavailableError
from uno_jobs.message import Encoded

__all__ = ["QueueSweep", "StoredMessage"]

log = logging.getLogger("uno_jobs.broker")

# The message properties uno_jobs and Celery set, kept when a message is published again.
_KEPT_PROPERTIES = ("correlation_id", "reply_to")


@dataclass(frozen=True)
class StoredMessage:
    """A message read from a broker queue by a ``QueueSweep``. Holds no kombu object.

    Attributes:
        body: The raw body.
        headers: The message headers.
        properties: ``correlation_id`` and ``reply_to`` where the message had them.
        content_type: As published (``None`` if the message had none).
        content_encoding: As published (``None`` if the message had none).
    """

    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    content_encoding: str | None = None

    @property
    def job_id(self) -> str | None:
        """The id a dead letter is known by: its ``correlation_id``, else its ``id`` header.

        The dead-letterer sets ``correlation_id`` to the job id, also to the id it made
        up for a message too broken to carry one.
        """
        for value in (self.properties.get("correlation_id"), self.headers.get("id")):
            if isinstance(value, str) and value:
                return value
        return None

    def encoded(self, headers: dict[str, Any] | None = None) -> Encoded:
        """The message as it was, ready to publish (with other ``headers`` if given)."""
        return Encoded(
            body=self.body,
            headers=dict(self.headers) if headers is None else headers,
            properties=dict(self.properties),
            content_type=self.content_type or "application/octet-stream",
            content_encoding=self.content_encoding or "binary",
        )


class QueueSweep:
    """One pass over the broker queue ``name`` (see the module docstring).

    Use it as a context manager::

        with QueueSweep(spec, "default.dead") as sweep:
            while batch := sweep.take(100):
                sweep.settle([Outgoing("default.dead", m.encoded()) for m in batch])

    Leaving the block closes the connection: messages taken and not settled go back to
    the head of the queue (on Redis their order among themselves may be reversed; if the
    process died instead, Redis and the embedded broker return them after their
    visibility timeout).

    Raises:
        BrokerUnavailableError: from any method, when the broker cannot be reached.
    """

    def __init__(self, spec: BrokerSpec, name: str) -> None:
        self.spec = spec
        self.name = name
        #: How many messages the queue held when the pass began (set on entering).
        self.initial_count = 0
        self._remaining = 0
        self._conn: Connection | None = None
        self._queue: Any = None
        self._session: PublishSession | None = None
        self._taken: list[Any] = []
        #: SQS ``MessageId``s this pass has taken (see the module docstring).
        self._seen: set[str] = set()

    def __enter__(self) -> QueueSweep:
        conn = self.spec.connection()
        self._conn = conn
        try:
            with self._translated():
                conn.ensure_connection(max_retries=1, timeout=self.spec.connect_timeout)
                self._queue = kombu_queue(self.name)(conn.channel())
                self._queue.declare()
                self.initial_count = int(self._queue.queue_declare().message_count)
                self._session = PublishSession(self.spec, connection=conn)
        except BaseException:
            self.close()
            raise
        self._remaining = self.initial_count
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def take(self, limit: int) -> list[StoredMessage]:
        """The next messages from the head of the queue, up to ``limit``.

        Returns an empty list once the pass has taken as many messages as the queue held
        when it began (or the queue is empty). Call ``settle`` before taking more.
        """
        if self._taken:
            raise RuntimeError(f"settle the {len(self._taken)} message(s) taken before")
        batch: list[StoredMessage] = []
        again = 0
        with self._translated():
            while self._remaining > 0 and len(batch) < limit:
                message = self._queue.get(no_ack=False, accept=None)
                if message is None:
                    self._remaining = 0
                    break
                self._taken.append(message)  # acked when the batch settles, either way
                sqs_id = _sqs_message_id(message)
                if sqs_id is not None and sqs_id in self._seen:
                    again += 1
                    if again >= limit:  # only messages taken before come: end this batch
                        break
                    continue
                if sqs_id is not None:
                    self._seen.add(sqs_id)
                self._remaining -= 1
                batch.append(_stored(message))
        if again:
            log.warning(
                "dead-letter pass over %s on %s: SQS handed out %d message(s) again that "
                "the pass had taken (the pass outlasted the visibility timeout of %g s); "
                "each is published once",
                self.name,
                self.spec.display,
                again,
                self.spec.visibility_timeout,
            )
            if not batch:  # no settle follows an empty batch: ack the copies now
                taken, self._taken = self._taken, []
                with self._translated():
                    for message in taken:
                        message.ack()
        return batch

    def settle(self, items: Sequence[Outgoing]) -> None:
        """Publish ``items`` (confirmed on RabbitMQ), then ack the messages last taken.

        Kept messages are in ``items`` too, published back to this queue in the order
        they were taken; a message with no item is dropped.

        Raises:
            BrokerUnavailableError: the publish failed: nothing was acked.
        """
        assert self._session is not None, "settle() outside the with block"
        taken, self._taken = self._taken, []
        with self._translated():
            self._session.publish(items)
            for message in taken:
                message.ack()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        conn, self._conn = self._conn, None
        self._taken = []
        if conn is not None:
            try:
                conn.release()
            except Exception:
                log.debug("closing a sweep connection failed", exc_info=True)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Connection problems become ``BrokerUnavailableError`` naming the broker."""
        try:
            yield
        except BrokerUnavailableError:
            raise
        except Exception as exc:
            if self._conn is not None and _is_connection_problem(self._conn, exc):
                raise BrokerUnavailableError(self.spec.display, _describe(exc)) from None
            raise


def _sqs_message_id(message: Any) -> str | None:
    """The ``MessageId`` of a message kombu's SQS channel received (the same every time
    SQS hands the message out; the receipt handle changes), else ``None``."""
    info = message.delivery_info or {}
    sqs_message = info.get("sqs_message")
    if isinstance(sqs_message, dict):
        value = sqs_message.get("MessageId")
        if isinstance(value, str):
            return value
    return None


def _stored(message: Any) -> StoredMessage:
    body = message.body
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    properties = message.properties or {}
    return StoredMessage(
        body=bytes(body or b""),
        headers=dict(message.headers or {}),
        properties={k: properties[k] for k in _KEPT_PROPERTIES if properties.get(k) is not None},
        content_type=message.content_type,
        content_encoding=message.content_encoding,
    )
