"""Workers: take jobs off a queue, run their tasks, record the outcomes.

See ``../shared/spec/WORKERS.md`` for the user-facing specification.
"""

import importlib
from typing import TYPE_CHECKING, Any

from uno_jobs.worker._base import BaseWorker, WorkerState
from uno_jobs.worker._executors import JobTimeLimitExceeded
from uno_jobs.worker._options import (
    AsyncWorkerOptions,
    SyncWorkerOptions,
    ThreadPoolWorkerOptions,
    WorkerOptions,
)
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
    from uno_jobs.worker._distributed import DistributedWorker, DistributedWorkerOptions
    from uno_jobs.worker._pool import WorkerPool, WorkerPoolOptions
    from uno_jobs.worker._process import ProcessPoolWorker, ProcessPoolWorkerOptions

# Loaded on first use, so a process that runs one in-process worker does not hold their
# code (the coordinator also needs redis-py: ~18 MB and 0.2 s to import).
_LAZY = {
    "WorkerCoordinator": "uno_jobs.coordination",
    "DistributedWorker": "uno_jobs.worker._distributed",
    "DistributedWorkerOptions": "uno_jobs.worker._distributed",
    "WorkerPool": "uno_jobs.worker._pool",
    "WorkerPoolOptions": "uno_jobs.worker._pool",
    "ProcessPoolWorker": "uno_jobs.worker._process",
    "ProcessPoolWorkerOptions": "uno_jobs.worker._process",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
