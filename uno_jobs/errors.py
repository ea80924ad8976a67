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
    ├── StoreUnavailableError       the job store could not be reached (names it)
    ├── JobNotFoundError            no record of that job id
    ├── JobStateError               the job's status does not allow it (cancel a finished job)
    ├── JobFailedError              raised by ``JobHandle.wait`` when the job failed
    ├── JobTimeoutError             ``JobHandle.wait`` gave up waiting
    ├── MessageError                a message that cannot be run (carries a dead reason)
    ├── WorkerStateError            a lifecycle call in the wrong state
    └── CoordinationError           the cluster store (Redis) failed or refused a request
        └── WorkerIdInUseError      a worker id that is alive in the cluster registered again

Control-flow signals are not errors. Two are raised by user code and live here, outside
the tree above::

    Retry                           from a task or a middleware hook: run the job again
    SkipJob                         from a middleware's ``before_execution``: do not run it

``JobTimeLimitExceeded`` and ``WorkerShutdown`` (``uno_jobs.worker``) derive from
``BaseException`` so task code cannot swallow them by accident.
"""

from __future__ import annotations

import math

__all__ = [
    "BrokerUnavailableError",
    "ConfigurationError",
    "CoordinationError",
    "DuplicateJobError",
    "DuplicateTaskError",
    "EnqueueError",
    "ForbiddenTaskError",
    "JobFailedError",
    "JobNotFoundError",
    "JobStateError",
    "JobTimeoutError",
    "MessageError",
    "PayloadError",
    "Retry",
    "SkipJob",
    "StoreUnavailableError",
    "TaskError",
    "UnknownTaskError",
    "UnoJobsError",
    "WorkerIdInUseError",
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


class StoreUnavailableError(UnoJobsError, ConnectionError):
    """The job store could not be reached (a Redis store that is down, say)."""

    def __init__(self, store: str, detail: str) -> None:
        super().__init__(f"job store {store} is unavailable: {detail}")
        self.store = store


class JobNotFoundError(UnoJobsError, LookupError):
    """There is no record of this job id in the store."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class JobStateError(UnoJobsError):
    """The job's status does not allow what was asked (cancelling a finished job, say)."""

    def __init__(self, job_id: str, status: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id!r}: it is {status}")
        self.job_id = job_id
        self.status = status
        self.action = action


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


class CoordinationError(UnoJobsError):
    """The cluster store of a ``WorkerCoordinator`` failed or refused a request."""


class WorkerIdInUseError(CoordinationError):
    """A worker registered an id that a live worker of the cluster holds.

    Attributes:
        worker_id: The id asked for.
        cluster_id: The cluster it is alive in.
    """

    def __init__(self, worker_id: str, cluster_id: str, holder: str) -> None:
        super().__init__(
            f"worker id {worker_id!r} is alive in cluster {cluster_id!r} ({holder}); "
            "give this worker another worker_id, or stop the other one first"
        )
        self.worker_id = worker_id
        self.cluster_id = cluster_id


class Retry(Exception):
    """Ask for another attempt of the job: ``raise Retry(delay=30)``.

    Raised by a task, or by a middleware's ``before_execution`` or ``after_execution``.
    The attempt counts as failed and the job runs again after ``delay`` seconds, which
    overrides the retry policy (``None`` lets the policy choose). It is bounded by the
    task's ``max_retries`` like any failure and ignores ``retry_on`` / ``dont_retry_on``:
    with the default ``max_retries=0`` a ``Retry`` ends the job ``failed`` with the dead
    reason ``max_retries_exceeded``.

    Args:
        delay: Seconds before the next attempt (>= 0), or ``None`` for the policy's delay.
        reason: Why, recorded as the attempt's error message.

    Raises:
        ValueError: ``delay`` is not ``None`` or a finite number of seconds >= 0.
    """

    def __init__(self, delay: float | None = None, reason: str | None = None) -> None:
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)):
                raise ValueError(f"Retry(delay={delay!r}): delay must be seconds or None")
            if not math.isfinite(delay) or delay < 0:
                raise ValueError(f"Retry(delay={delay!r}): delay must be finite and >= 0")
            delay = float(delay)
        when = "with the retry policy's delay" if delay is None else f"in {delay:g} s"
        super().__init__(f"retry requested {when}" + (f": {reason}" if reason else ""))
        self.delay = delay
        self.reason = reason

    def __reduce__(self) -> tuple[type[Retry], tuple[float | None, str | None]]:
        # Keeps the delay when a process-pool child sends the signal back pickled.
        return (type(self), (self.delay, self.reason))


class SkipJob(Exception):
    """Raised by a middleware's ``before_execution``: the job is not run.

    It ends ``dead`` with reason ``cancelled``; its dead-letter detail names the
    middleware and ``reason``. Raised anywhere else it is an ordinary exception.

    Attributes:
        reason: Why the job is skipped.
        middleware: The class name of the middleware that raised it (set by the worker).
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "skipped by middleware")
        self.reason = reason
        self.middleware: str | None = None

    def __reduce__(self) -> tuple[type[SkipJob], tuple[str]]:
        return (type(self), (self.reason,))
