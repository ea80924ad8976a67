"""SQS specifics kombu leaves out: message size after kombu's encoding.

kombu's SQS transport wraps a message twice: the body goes base64 into a JSON envelope
with its headers and properties, and the envelope is base64-encoded again
(``sqs_base64_encoding``, on by default). A body well under SQS's limit can therefore be
refused by SQS; :func:`check_sizes` measures the message as kombu will send it and refuses
it first, naming the job, against the queue's own ``MaximumMessageSize``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

from kombu.utils.json import dumps

from uno_jobs.errors import PayloadError
from uno_jobs.message import Encoded

__all__ = ["SqsSizes", "wire_size"]

#: SQS's default ``MaximumMessageSize`` (a queue may be set lower).
DEFAULT_SQS_MAX_BYTES = 262_144


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
