"""Structured logs: every line logged about a job carries its id, task, attempt and worker.

While a worker runs a job, the job's fields are in a context variable, and
:class:`JobContextFilter` (on the CLI's log handler; add it to yours) copies them onto
every record logged in that context: uno_jobs' own lines and the task's (threads and
coroutines inherit the context; process-pool children log their own lines without it).
Lines logged about a job outside that context (dead-lettering, a lost worker) pass the
same fields as ``extra``.

Record attributes: ``job_id``, ``task``, ``attempt``, ``worker_id``, ``queue``. Two
formatters use them: :class:`TextFormatter` appends ``[job=… task=… attempt=… worker=…]``
to a line that has them, :class:`JsonFormatter` writes one JSON object per line
(``uno-jobs --log-format json``).
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "JOB_FIELDS",
    "JobContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "job_context",
]

#: The job fields a record may carry, in the order they are shown.
JOB_FIELDS = ("job_id", "task", "attempt", "worker_id", "queue")

_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "uno_jobs_log_job", default=None
)


class job_context:
    """Attach ``fields`` (a subset of :data:`JOB_FIELDS`) to the records logged inside.

    (A class rather than a generator: it is on the per-job path.)
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields
        self._token: contextvars.Token[dict[str, Any] | None] | None = None

    def __enter__(self) -> None:
        self._token = _current.set(self._fields)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)


class JobContextFilter(logging.Filter):
    """A handler filter that copies the current job's fields onto each record it sees.

    Add it to your own handlers (``handler.addFilter(JobContextFilter())``); the CLI's
    handler has it. Fields a record already has (passed as ``extra``) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _current.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def _job_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: getattr(record, key) for key in JOB_FIELDS if hasattr(record, key)}


class TextFormatter(logging.Formatter):
    """The usual text line, plus ``[job=… task=… attempt=… worker=…]`` about a job."""

    _labels = {"job_id": "job", "task": "task", "attempt": "attempt", "worker_id": "worker"}

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _job_fields(record)
        if "job_id" not in fields:
            return line
        shown = " ".join(
            f"{label}={fields[key]}" for key, label in self._labels.items() if key in fields
        )
        head, sep, tail = line.partition("\n")  # keep a traceback below the tagged line
        return f"{head} [{shown}]{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, job fields, error."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
        entry: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_job_fields(record),
        }
        dead_reason = getattr(record, "dead_reason", None)
        if dead_reason is not None:
            entry["dead_reason"] = dead_reason
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: int | str = logging.INFO, fmt: str = "text") -> None:
    """Set up the root logger for a uno_jobs process (the CLI calls this).

    Like ``logging.basicConfig``, it leaves a root logger alone that has handlers it did
    not install (an application's, or pytest's).

    Args:
        level: A level number or name.
        fmt: ``text`` or ``json``.

    Raises:
        ValueError: an unknown ``fmt``.
    """
    formatters = {"text": TextFormatter, "json": JsonFormatter}
    if fmt not in formatters:
        raise ValueError(f"unknown log format {fmt!r} (known: text, json)")
    root = logging.getLogger()
    if any(not getattr(h, "_uno_jobs", False) for h in root.handlers):
        return
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = logging.StreamHandler()
    handler.setFormatter(formatters[fmt]())
    handler.addFilter(JobContextFilter())
    handler._uno_jobs = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
