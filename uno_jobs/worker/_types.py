"""The built-in worker types: the shared base plus one executor each."""

from __future__ import annotations

from typing import ClassVar

from uno_jobs.worker._base import BaseWorker
from uno_jobs.worker._executors import AsyncExecutor, Executor, ThreadExecutor
from uno_jobs.worker._options import (
    AsyncWorkerOptions,
    SyncWorkerOptions,
    ThreadPoolWorkerOptions,
    WorkerOptions,
)

__all__ = ["AsyncWorker", "SyncWorker", "ThreadPoolWorker"]

# Sync task functions on an AsyncWorker run in threads; this caps that pool.
_ASYNC_WORKER_SYNC_THREADS = 16


class SyncWorker(BaseWorker):
    """Processes jobs one at a time in a single thread of its own."""

    options_model: ClassVar[type[WorkerOptions]] = SyncWorkerOptions

    def make_executor(self) -> Executor:
        return ThreadExecutor(1, self.worker_id)


class ThreadPoolWorker(BaseWorker):
    """Processes up to ``max_threads`` jobs at once in a pool of threads."""

    options_model: ClassVar[type[WorkerOptions]] = ThreadPoolWorkerOptions

    def make_executor(self) -> Executor:
        return ThreadExecutor(self.concurrency, self.worker_id)


class AsyncWorker(BaseWorker):
    """Runs up to ``max_concurrent`` jobs as coroutines on the event loop.

    A sync task function runs in a thread, so it does not block the loop.
    """

    options_model: ClassVar[type[WorkerOptions]] = AsyncWorkerOptions

    def make_executor(self) -> Executor:
        return AsyncExecutor(min(self.concurrency, _ASYNC_WORKER_SYNC_THREADS), self.worker_id)
