"""JSON job-event logs for uno_jobs, as a plugin: the ``jsonlog`` middleware."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from uno_jobs import hookimpl
from uno_jobs.middleware import JobView, Middleware

__all__ = ["JsonLogMiddleware"]

LOGGER_NAME = "uno_jobs.jsonlog"


def _logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class JsonLogMiddleware(Middleware):
    """One JSON line per job event: ``job.started``, ``job.succeeded``, ``job.failed``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or _logger()
        self._started: dict[str, float] = {}

    def _emit(self, event: str, job: JobView, **fields: Any) -> None:
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        record = {
            "event": event,
            "ts": stamp.replace("+00:00", "Z"),
            "job_id": job["id"],
            "task": job["task"],
            "queue": job["queue"],
            "attempt": job["attempt"],
            "worker_id": job["worker_id"],
            **fields,
        }
        self.log.info(json.dumps(record, default=str))

    def _duration_ms(self, job: JobView) -> float | None:
        started = self._started.pop(f"{job['id']}:{job['attempt']}", None)
        return None if started is None else round((time.perf_counter() - started) * 1000, 3)

    async def before_execution(self, job: JobView, task_func: Callable[..., Any]) -> None:
        self._started[f"{job['id']}:{job['attempt']}"] = time.perf_counter()
        self._emit("job.started", job)

    async def after_execution(
        self, job: JobView, task_func: Callable[..., Any], result: Any
    ) -> Any:
        self._emit("job.succeeded", job, duration_ms=self._duration_ms(job))
        return result

    async def on_error(
        self, job: JobView, task_func: Callable[..., Any], exception: BaseException
    ) -> None:
        self._emit(
            "job.failed",
            job,
            duration_ms=self._duration_ms(job),
            error_type=type(exception).__name__,
            error=str(exception),
        )


@hookimpl
def uno_jobs_middleware() -> Mapping[str, Callable[[], Middleware]]:
    return {"jsonlog": JsonLogMiddleware}


@hookimpl
def uno_jobs_add_worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jsonlog-file",
        default=None,
        metavar="PATH",
        help="jsonlog plugin: append the JSON job events to this file (default: stderr)",
    )


@hookimpl
def uno_jobs_worker_boot(worker: Any) -> None:
    path = worker.settings.get("jsonlog_file")
    if path:
        logger = _logger()
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        file_handler = logging.FileHandler(path)
        file_handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(file_handler)
