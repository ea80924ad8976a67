"""uno_jobs: background jobs for Python.

Applications enqueue jobs onto a broker (RabbitMQ, Redis, SQS, or the embedded default);
workers take them off, run the task and record the outcome. Messages use Celery's task
protocol v2, so Celery producers and workers interoperate.
"""

from typing import TYPE_CHECKING, Any

from uno_jobs.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DuplicateJobError,
    JobFailedError,
    JobNotFoundError,
    JobStateError,
    JobTimeoutError,
    PayloadError,
    Retry,
    SkipJob,
    StoreUnavailableError,
    UnoJobsError,
)
from uno_jobs.middleware import Middleware
from uno_jobs.plugins import hookimpl
from uno_jobs.queue import JobHandle, JobSpec, Queue
from uno_jobs.store import JobRecord, JobStatus
from uno_jobs.tasks import Task, TaskRegistry, task
from uno_jobs.worker import AsyncWorker, SyncWorker, ThreadPoolWorker

if TYPE_CHECKING:
    from uno_jobs.worker import ProcessPoolWorker

__version__ = "0.1.0"

__all__ = [
    "AsyncWorker",
    "BrokerUnavailableError",
    "ConfigurationError",
    "DuplicateJobError",
    "JobFailedError",
    "JobHandle",
    "JobNotFoundError",
    "JobRecord",
    "JobSpec",
    "JobStateError",
    "JobStatus",
    "JobTimeoutError",
    "Middleware",
    "PayloadError",
    "ProcessPoolWorker",
    "Queue",
    "Retry",
    "SkipJob",
    "StoreUnavailableError",
    "SyncWorker",
    "Task",
    "TaskRegistry",
    "ThreadPoolWorker",
    "UnoJobsError",
    "__version__",
    "hookimpl",
    "task",
]


def __getattr__(name: str) -> Any:
    # Loaded on first use, with the process machinery (uno_jobs.worker does the same).
    if name == "ProcessPoolWorker":
        from uno_jobs.worker import ProcessPoolWorker

        return ProcessPoolWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
