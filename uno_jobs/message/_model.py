"""The job envelope: :class:`Message`, its priority levels and its times.

This is what a job *is* on the wire, independent of how it is serialised: the fields of
one job (id, task, arguments, queue, level, retries, eta/expires, limits, workflow ids,
the headers it carries along), :func:`new_message` that builds and checks a new one, and
the small helpers every layer shares (level names, ISO-8601 times as Celery writes them).
The bytes (Celery protocol v2 JSON) are :mod:`uno_jobs.message._codec`'s business, so
code that only builds or reads messages need not follow the wire format.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from uno_jobs.errors import ConfigurationError, PayloadError

__all__ = [
    "PRIORITY_LEVELS",
    "Message",
    "default_embed",
    "iso_from_timestamp",
    "new_message",
    "parse_iso",
    "parse_priority",
    "random_uuid",
    "time_ordered_uuid",
    "timestamp_from_iso",
]

PRIORITY_LEVELS: tuple[str, ...] = ("critical", "high", "normal", "low")

# AMQP's correlation_id is a shortstr: longer ids cannot be published at all.
_MAX_ID_BYTES = 255


def default_embed() -> dict[str, Any]:
    """Celery's ``embed`` (body[2]) of a job that is not part of a workflow."""
    return {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(slots=True)
class Message:
    """One job as it travels on the wire.

    ``queue`` is the logical uno_jobs queue (``"default"``), whatever priority level's
    broker queue carried it. ``retries`` is Celery's header: the attempt number minus one.
    ``extra_headers`` keeps every header that has no field of its own (trace context,
    Celery's ``shadow``/``stamps``/``argsrepr``, unknown ones) and :func:`encode` sends
    them back out, so a retry or a dead letter keeps its trace and its Celery metadata.
    """

    id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    priority: str = "normal"
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    origin: str | None = None
    enqueued_at: float | None = None
    worker_lost: int = 0
    extra_headers: dict[str, Any] = field(default_factory=dict)
    embed: dict[str, Any] = field(default_factory=default_embed)

    @property
    def attempt(self) -> int:
        """The attempt this delivery is: 1 for the first run."""
        return self.retries + 1


# --- Levels and times ----------------------------------------------------------------


def parse_priority(value: str) -> str:
    """Validate a priority level name.

    Args:
        value: A level name; surrounding spaces and case are ignored.

    Returns:
        The level name as spelled in :data:`PRIORITY_LEVELS`.

    Raises:
        ConfigurationError: ``value`` is not a level; the message names the allowed ones.
    """
    if value in PRIORITY_LEVELS:
        return value
    if isinstance(value, str):
        normalised = value.strip().lower()
        if normalised in PRIORITY_LEVELS:
            return normalised
    allowed = ", ".join(PRIORITY_LEVELS)
    raise ConfigurationError(f"unknown priority {value!r}: expected one of {allowed}")


def timestamp_from_iso(value: str) -> float:
    """POSIX time of an ISO-8601 string such as a message's ``eta`` or ``expires``.

    A time without an offset is taken as UTC, as Celery does with its default settings.

    Raises:
        ValueError: ``value`` is not an ISO-8601 date and time.
    """
    when = parse_iso(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def iso_from_timestamp(timestamp: float) -> str:
    """The ISO-8601 form (UTC, with offset) of a POSIX time, as Celery writes ``eta``."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


def parse_iso(value: str) -> datetime:
    """Parse an ISO-8601 date and time, also with the ``Z`` suffix (raises ``ValueError``)."""
    text = value.strip()
    # Python 3.10's fromisoformat does not know the "Z" suffix other producers use.
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


def _iso_option(value: datetime | str | None, what: str, task: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    if isinstance(value, str):
        try:
            parse_iso(value)
        except ValueError:
            raise PayloadError(f"task {task!r}: {what} {value!r} is not ISO-8601") from None
        return value
    raise PayloadError(f"task {task!r}: {what} must be a datetime or an ISO-8601 string")


# --- Building ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _hostname() -> str:
    return socket.gethostname()


_origin_of_pid: tuple[int, str] = (0, "")


def _origin() -> str:
    """``gen<pid>@<hostname>``, made again only in a new process (after a fork)."""
    global _origin_of_pid
    pid = os.getpid()
    if _origin_of_pid[0] != pid:
        _origin_of_pid = (pid, f"gen{pid}@{_hostname()}")
    return _origin_of_pid[1]


_VARIANT_DIGITS = "89ab"  # the RFC 4122 variant: the top two bits of byte 8 are 10


def random_uuid() -> str:
    """A random (version 4) UUID in its usual text form, as ``str(uuid.uuid4())`` gives.

    From the same 122 random bits of ``os.urandom``, formatted directly: ``uuid.UUID``
    goes through an int and its checks, which costs three times as much (once per job
    enqueued, for its id).
    """
    h = os.urandom(16).hex()
    variant = _VARIANT_DIGITS[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def time_ordered_uuid() -> str:
    """A version 7 UUID (RFC 9562) in its usual text form: the Unix time in milliseconds
    (48 bits), then 74 random bits from ``os.urandom``; ids made later sort after.

    New job ids are these. A store's index of ids (SQLite's B-tree) then takes a batch of
    new jobs at its end, in a few pages, where random (version 4) ids land all over it:
    a bulk enqueue of 1,000 jobs into a store of 60,000 wrote several times the pages,
    and took twice as long. 74 random bits keep ids unguessable and apart across
    processes making them in the same millisecond.
    """
    stamp = f"{(time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF:012x}"
    r = os.urandom(10).hex()
    variant = _VARIANT_DIGITS[int(r[3], 16) & 3]
    return f"{stamp[:8]}-{stamp[8:]}-7{r[:3]}-{variant}{r[4:7]}-{r[7:19]}"


def new_message(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue: str,
    priority: str = "normal",
    job_id: str | None = None,
    eta: datetime | str | None = None,
    expires: datetime | str | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    group: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> Message:
    """Build the message of a new job.

    The id is a random UUID unless ``job_id`` is given; ``root_id`` defaults to the id,
    ``origin`` is ``gen<pid>@<hostname>`` as Celery writes it, and ``enqueued_at`` is now.

    Args:
        task: The task name (registered name or dotted path).
        args: Positional arguments.
        kwargs: Keyword arguments.
        queue: The logical queue name.
        priority: One of :data:`PRIORITY_LEVELS`.
        job_id: The job id to use instead of a new UUID (at most 255 UTF-8 bytes).
        eta: Do not run before this time; a naive datetime is UTC.
        expires: Do not run after this time; a naive datetime is UTC.
        time_limit: Hard time limit in seconds.
        soft_time_limit: Soft time limit in seconds.
        root_id: The id of the job that started this workflow.
        parent_id: The id of the job that enqueued this one.
        group: The group id, when the job is part of one.
        headers: Extra headers to send (trace context, ``uno_*``).

    Returns:
        The message; nothing is serialised yet (see :func:`encode`).

    Raises:
        PayloadError: The task name, arguments, id or times are of the wrong kind.
        ConfigurationError: ``priority`` is not a level.
    """
    if not isinstance(task, str) or not task:
        raise PayloadError(f"the task name must be a non-empty string, not {task!r}")
    if not isinstance(queue, str) or not queue:
        raise PayloadError(f"task {task!r}: the queue name must be a non-empty string")
    # The exact-type tests first: the abstract-class checks cost more than the rest.
    if type(args) not in (list, tuple) and (
        isinstance(args, (str, bytes)) or not isinstance(args, Sequence)
    ):
        raise PayloadError(f"task {task!r}: args must be a list or tuple, not {type(args)}")
    kwargs = {} if kwargs is None else kwargs
    if (type(kwargs) is not dict and not isinstance(kwargs, Mapping)) or (
        kwargs and not all(isinstance(k, str) for k in kwargs)
    ):
        raise PayloadError(f"task {task!r}: kwargs must be a mapping with string keys")
    job_id = time_ordered_uuid() if job_id is None else job_id
    if not isinstance(job_id, str) or not job_id or len(job_id.encode()) > _MAX_ID_BYTES:
        raise PayloadError(
            f"task {task!r}: job id {job_id!r} must be a non-empty string "
            f"of at most {_MAX_ID_BYTES} bytes"
        )
    if time_limit is not None or soft_time_limit is not None:
        for name, limit in (("time_limit", time_limit), ("soft_time_limit", soft_time_limit)):
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0
            ):
                raise PayloadError(f"task {task!r}: {name} must be a positive number of seconds")
    return Message(
        id=job_id,
        task=task,
        args=list(args),
        kwargs=dict(kwargs),
        queue=queue,
        priority=parse_priority(priority),
        eta=_iso_option(eta, "eta", task),
        expires=_iso_option(expires, "expires", task),
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        root_id=root_id or job_id,
        parent_id=parent_id,
        group=group,
        origin=_origin(),
        enqueued_at=time.time(),
        extra_headers=dict(headers) if headers else {},
    )
