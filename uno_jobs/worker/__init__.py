"""Workers: take jobs off a queue, run their tasks, record the outcomes.

See ``../shared/spec/WORKERS.md`` for the user-facing specification.
"""

from typing import TYPE_CHECKING, Any

from uno_jobs.worker._base import BaseWorker, WorkerState
from uno_jobs.worker._distributed import DistributedWorker, DistributedWorkerOptions
from uno_jobs.worker._executors import JobTimeLimitExceeded
from uno_jobs.worker._options import (
    AsyncWorkerOptions,
    SyncWorkerOptions,
    ThreadPoolWorkerOptions,
    WorkerOptions,
)
from uno_jobs.worker._pool import WorkerPool, WorkerPoolOptions
from uno_jobs.worker._process import ProcessPoolWorker, ProcessPoolWorkerOptions
from uno_jobs.worker._types import AsyncWorker, SyncWorker, ThreadPoolWorker

__all__ = [
    "AsyncWorker",
    "AsyncWorkerOptions",
    "BaseWorker",
    "DistributedWorker",
    "DistributedWorkerOptions",
    "JobTimeLimitExceeded",
    "ProcessPoolWorker",
    "ProcessPoolWorkerOptions",
    "SyncWorker",
    "SyncWorkerOptions",
    "ThreadPoolWorker",
    "ThreadPoolWorkerOptions",
    "WorkerCoordinator",
    "WorkerOptions",
    "WorkerPool",
    "WorkerPoolOptions",
    "WorkerState",
]

if TYPE_CHECKING:
    from uno_jobs.coordination import WorkerCoordinator


def __getattr__(name: str) -> Any:
    # The coordinator needs redis-py (~18 MB and 0.2 s to import): loaded on first use.
    if name == "WorkerCoordinator":
        from uno_jobs.coordination import WorkerCoordinator

        return WorkerCoordinator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
