"""Every error uno_jobs raises, in one tree.

::

    UnoJobsError
    ├── ConfigurationError          a bad option, URL or environment value (names it)
    ├── TaskError
    │   ├── UnknownTaskError        no task registered under that name
    │   ├── ForbiddenTaskError      a module path outside the allowlist, or not a task
    │   └── DuplicateTaskError      two tasks registered under one name
    ├── EnqueueError
    │   ├── DuplicateJobError       a job with that id exists already
    │   ├── PayloadError            arguments not JSON-serialisable, or too large
    │   └── BrokerUnavailableError  the broker could not be reached or did not confirm
    ├── JobNotFoundError            no record of that job id
    ├── JobFailedError              raised by ``JobHandle.wait`` when the job failed
    ├── JobTimeoutError             ``JobHandle.wait`` gave up waiting
    ├── MessageError                a message that cannot be run (carries a dead reason)
    └── WorkerStateError            a lifecycle call in the wrong state

Control-flow signals are not errors and live elsewhere: ``JobTimeLimitExceeded`` and
``WorkerShutdown`` (``uno_jobs.worker``) derive from ``BaseException`` so task code cannot
swallow them by accident.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "ConfigurationError",
    "DuplicateJobError",
    "DuplicateTaskError",
    "EnqueueError",
    "ForbiddenTaskError",
    "JobFailedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "MessageError",
    "PayloadError",
    "TaskError",
    "UnknownTaskError",
    "UnoJobsError",
    "WorkerStateError",
]


class UnoJobsError(Exception):
    """Base class of every error raised by uno_jobs."""


class ConfigurationError(UnoJobsError, ValueError):
    """An option, URL or environment value is wrong. The message names it."""


class TaskError(UnoJobsError):
    """A task name could not be turned into a task."""

    def __init__(self, task_name: str, message: str) -> None:
        super().__init__(message)
        self.task_name = task_name


class UnknownTaskError(TaskError, LookupError):
    """No task is registered under this name."""

    def __init__(self, task_name: str, message: str | None = None) -> None:
        super().__init__(task_name, message or f"unknown task {task_name!r}")


class ForbiddenTaskError(TaskError):
    """A dotted module path that the worker is not allowed to import or run."""

    def __init__(self, task_name: str, reason: str) -> None:
        super().__init__(task_name, f"forbidden task {task_name!r}: {reason}")
        self.reason = reason


class DuplicateTaskError(TaskError):
    """Two different functions were registered under one task name."""

    def __init__(self, task_name: str) -> None:
        super().__init__(task_name, f"a different task is already registered as {task_name!r}")


class EnqueueError(UnoJobsError):
    """A job could not be enqueued. Nothing was published."""


class DuplicateJobError(EnqueueError):
    """A job with this id exists already."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"a job with id {job_id!r} already exists")
        self.job_id = job_id


class PayloadError(EnqueueError, ValueError):
    """The job's arguments cannot be sent (not JSON-serialisable, or too large)."""


class BrokerUnavailableError(EnqueueError, ConnectionError):
    """The broker could not be reached, or did not confirm a publish in time."""

    def __init__(self, broker: str, detail: str) -> None:
        super().__init__(f"broker {broker} is unavailable: {detail}")
        self.broker = broker


class JobNotFoundError(UnoJobsError, LookupError):
    """There is no record of this job id in the store."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class JobFailedError(UnoJobsError):
    """The job ended ``failed`` or ``dead``; raised by ``JobHandle.wait``."""

    def __init__(
        self,
        job_id: str,
        status: str,
        error_type: str | None,
        error_message: str | None,
        dead_reason: str | None = None,
    ) -> None:
        what = f"{error_type}: {error_message}" if error_type else (dead_reason or status)
        super().__init__(f"job {job_id} {status}: {what}")
        self.job_id = job_id
        self.status = status
        self.error_type = error_type
        self.error_message = error_message
        self.dead_reason = dead_reason


class JobTimeoutError(UnoJobsError, TimeoutError):
    """``JobHandle.wait`` gave up before the job finished."""

    def __init__(self, job_id: str, timeout: float, status: str) -> None:
        super().__init__(f"job {job_id} still {status} after waiting {timeout:g} s")
        self.job_id = job_id
        self.status = status


class MessageError(UnoJobsError):
    """A message that cannot be run. ``reason`` is its dead-letter reason."""

    def __init__(self, reason: str, detail: str, job_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.job_id = job_id


class WorkerStateError(UnoJobsError, RuntimeError):
    """A lifecycle call that the worker's current state does not allow."""
