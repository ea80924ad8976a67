"""uno_jobs' own contributions, registered through the same hooks as any plugin."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from uno_jobs.plugins._hookspecs import hookimpl

if TYPE_CHECKING:
    from uno_jobs.middleware import Middleware
    from uno_jobs.retry import RetryPolicy
    from uno_jobs.store import JobStore
    from uno_jobs.worker import BaseWorker


@hookimpl
def uno_jobs_worker_types() -> Mapping[str, type[BaseWorker]]:
    from uno_jobs.worker._distributed import DistributedWorker
    from uno_jobs.worker._process import ProcessPoolWorker
    from uno_jobs.worker._types import AsyncWorker, SyncWorker, ThreadPoolWorker

    return {
        "sync": SyncWorker,
        "thread": ThreadPoolWorker,
        "async": AsyncWorker,
        "process": ProcessPoolWorker,
        "distributed": DistributedWorker,
    }


@hookimpl
def uno_jobs_retry_policies() -> Mapping[str, Callable[..., RetryPolicy]]:
    from uno_jobs.retry import ExponentialBackoff, FixedDelay

    return {"fixed": FixedDelay, "exponential": ExponentialBackoff}


@hookimpl
def uno_jobs_middleware() -> Mapping[str, Callable[[], Middleware]]:
    from uno_jobs.middleware import LogMiddleware

    return {"log": LogMiddleware}


@hookimpl
def uno_jobs_job_stores() -> Mapping[str, Callable[..., JobStore]]:
    from uno_jobs.store import open_builtin_store

    return {scheme: open_builtin_store for scheme in ("memory", "sqlite", "redis", "rediss")}


@hookimpl
def uno_jobs_metrics_exporters() -> Mapping[str, Callable[..., Any]]:
    return {}
