"""The job envelope and its encoding as a Celery task message (protocol v2, JSON).

A :class:`Message` is one job on the wire. :func:`encode` turns it into the body, headers
and properties that Celery 5 itself publishes (``celery.app.amqp.AMQP.as_task_v2``), so a
Celery worker can run a job enqueued by uno_jobs; :func:`decode` reads what Celery's
``send_task`` publishes, so an uno_jobs worker can run a job enqueued by Celery
(DESIGN.md §2, "Wire format").

The package keeps its two halves apart: ``_model.py`` holds the envelope itself
(:class:`Message`, :func:`new_message`, priority levels and times), and ``_codec.py``
the wire format (:class:`Encoded`, :func:`encode`, :func:`decode` and its header
checks, :func:`dead_letter_headers`). Import from here: this namespace is the public one.
"""

from __future__ import annotations

from uno_jobs.message._codec import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    DEFAULT_MAX_MESSAGE_BYTES,
    Encoded,
    dead_letter_headers,
    decode,
    encode,
    header_count,
)
from uno_jobs.message._model import (
    PRIORITY_LEVELS,
    Message,
    iso_from_timestamp,
    new_message,
    parse_priority,
    random_uuid,
    time_ordered_uuid,
    timestamp_from_iso,
)

__all__ = [
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PRIORITY_LEVELS",
    "Encoded",
    "Message",
    "dead_letter_headers",
    "decode",
    "encode",
    "header_count",
    "iso_from_timestamp",
    "new_message",
    "parse_priority",
    "random_uuid",
    "time_ordered_uuid",
    "timestamp_from_iso",
]
