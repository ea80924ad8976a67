"""An example uno_jobs plugin: one worker type, one middleware, one retry policy."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from typing import Any

from uno_jobs import hookimpl
from uno_jobs.middleware import Middleware
from uno_jobs.retry import RetryContext
from uno_jobs.worker import AsyncWorker

_ids = itertools.count(1)


class ExampleAsyncWorker(AsyncWorker):
    """An AsyncWorker whose default worker id says where it came from."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("worker_id", f"example-{os.getpid()}-{next(_ids)}")
        super().__init__(**options)


class StampMiddleware(Middleware):
    """Wraps every result so it shows which middleware recorded it."""

    async def after_execution(self, job: Any, task_func: Callable[..., Any], result: Any) -> Any:
        return {"value": result, "stamped_by": "example"}


class QuickRetry:
    """Retry at once, ignoring the task's retry_delay."""

    def next_delay(self, context: RetryContext) -> float | None:
        return 0.0


@hookimpl
def uno_jobs_worker_types() -> Mapping[str, type]:
    return {"example-async": ExampleAsyncWorker}


@hookimpl
def uno_jobs_middleware() -> Mapping[str, Callable[[], Middleware]]:
    return {"stamp": StampMiddleware}


@hookimpl
def uno_jobs_retry_policies() -> Mapping[str, Callable[..., Any]]:
    return {"quick": QuickRetry}
