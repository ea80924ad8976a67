"""SQS specifics kombu leaves out: message size after kombu's encoding, per-message delays.

kombu's SQS transport wraps a message twice: the body goes base64 into a JSON envelope
with its headers and properties, and the envelope is base64-encoded again
(``sqs_base64_encoding``, on by default). A body well under SQS's limit can therefore be
refused by SQS; :meth:`SqsSizes.check` measures the message as kombu will send it and refuses
it first, naming the job, against the queue's own ``MaximumMessageSize``.

SQS can hold a message back itself for up to 15 minutes (``DelaySeconds`` on
``SendMessage``); :func:`sqs_delay_seconds` says whether a delay fits. kombu's SQS channel
passes a ``DelaySeconds`` message property on to ``send_message`` for a standard queue; on
a FIFO queue (a ``.fifo`` name) it drops the property (SQS refuses per-message delays
there), so such a delay is never given to SQS but kept in the job store's schedule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

from kombu.utils.json import dumps

from uno_jobs.errors import PayloadError
from uno_jobs.message import Encoded

__all__ = ["MAX_DELAY_SECONDS", "SqsSizes", "sqs_delay_seconds", "wire_size"]

#: SQS's default ``MaximumMessageSize`` (a queue may be set lower).
DEFAULT_SQS_MAX_BYTES = 262_144

#: The longest per-message delay SQS takes (``DelaySeconds``, whole seconds).
MAX_DELAY_SECONDS = 900


def sqs_delay_seconds(routing_key: str, delay: float) -> int | None:
    """Whole seconds of ``DelaySeconds`` that hold a message back at least ``delay``
    seconds, or ``None`` when SQS cannot hold it (longer than 15 minutes, a FIFO queue,
    or no delay at all).

    Rounded up, never down: the message must not arrive before its ``eta``.
    """
    if delay <= 0 or routing_key.endswith(".fifo"):
        return None
    seconds = math.ceil(delay)
    return seconds if seconds <= MAX_DELAY_SECONDS else None


def wire_size(channel: Any, routing_key: str, encoded: Encoded) -> int:
    """Bytes of ``MessageBody`` kombu's SQS channel will send for ``encoded``."""
    message = channel.prepare_message(
        encoded.body,
        None,
        encoded.content_type,
        encoded.content_encoding,
        copy.deepcopy(encoded.headers),
        {"delivery_mode": 2, **encoded.properties},
    )
    channel._inplace_augment_message(message, routing_key, routing_key)
    size = len(dumps(message).encode("utf-8"))
    if channel.sqs_base64_encoding:
        size = 4 * math.ceil(size / 3)
    return size


class SqsSizes:
    """Checks outgoing messages against their SQS queues' maximum sizes (looked up once)."""

    def __init__(self) -> None:
        self._limits: dict[str, int] = {}

    def limit(self, channel: Any, routing_key: str) -> int:
        limit = self._limits.get(routing_key)
        if limit is None:
            url = channel._new_queue(routing_key)
            reply = channel.sqs().get_queue_attributes(
                QueueUrl=url, AttributeNames=["MaximumMessageSize"]
            )
            value = (reply.get("Attributes") or {}).get("MaximumMessageSize")
            limit = int(value) if value else DEFAULT_SQS_MAX_BYTES
            self._limits[routing_key] = limit
        return limit

    def forget(self, channel: Any, names: Sequence[str]) -> None:
        """Drop what is cached about these queues (deleted): their maximum sizes here, and
        their URLs in the kombu connection's cache (kombu keeps it per connection, so a
        queue deleted through another one would be looked up at its old URL)."""
        cache = getattr(channel, "_queue_cache", None)
        for name in names:
            self._limits.pop(name, None)
            if cache is not None:
                cache.pop(channel.canonical_queue_name(name), None)
                cache.pop(name, None)

    def check(self, channel: Any, items: Sequence[tuple[str, Encoded]]) -> None:
        """Raise ``PayloadError`` for the first message over its queue's maximum."""
        for routing_key, encoded in items:
            size = wire_size(channel, routing_key, encoded)
            limit = self.limit(channel, routing_key)
            if size > limit:
                job = encoded.headers.get("id", "?")
                task = encoded.headers.get("task", "?")
                raise PayloadError(
                    f"task {task!r} job {job}: the message is {size} bytes once encoded "
                    f"for SQS, over the limit of {limit} bytes of queue {routing_key!r} "
                    f"({len(encoded.body)} bytes of arguments before encoding)"
                )
