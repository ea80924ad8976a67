"""Middleware: hooks around enqueueing and executing jobs (DESIGN.md §1).

Middleware form an onion: before-hooks run in the order given, after-hooks and
``on_error`` in reverse. Hooks receive the job as a read-only mapping with the keys
``id, task, args, kwargs, queue, priority, attempt, enqueued_at, headers, worker_id``.
The base class's hooks are ``async def``; an override may be sync or async.

What a raising hook does:

- ``before_execution`` raises an exception: the task is not run and the attempt fails
  like a task error, with a :class:`MiddlewareError` naming the middleware (retried if
  the task's retry settings say so). The later middleware's ``before_execution`` hooks
  do not run; every middleware's ``on_error`` does.
- ``before_execution`` raises :class:`SkipJob`: the task is not run; the job ends
  ``dead`` with reason ``cancelled`` and a detail naming the middleware and the reason.
  ``on_error`` is not called.
- ``before_execution`` or ``after_execution`` raises :class:`Retry`: the attempt counts as
  failed and the job is retried after ``Retry.delay`` (bounded by ``max_retries``, as
  when the task raises it). After ``after_execution`` the task's result is dropped.
- ``after_execution`` or ``on_error`` raises anything else: it is logged and the job's
  outcome is unchanged (the remaining hooks still run).
- ``before_enqueue`` raises: nothing is enqueued and the exception reaches the caller;
  ``after_enqueue`` raising is logged.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from uno_jobs.errors import Retry, SkipJob

if TYPE_CHECKING:
    from uno_jobs.message import Message

__all__ = [
    "JobView",
    "LogMiddleware",
    "Middleware",
    "MiddlewareChain",
    "MiddlewareError",
    "Retry",
    "SkipJob",
    "job_fields",
    "job_view",
]

log = logging.getLogger("uno_jobs.middleware")

JobView = Mapping[str, Any]


class Middleware:
    """Base class for middleware; override the hooks you need.

    ``after_execution`` returns the result to record (the base returns ``result``
    unchanged). ``on_error``'s return value is ignored. An exception raised by
    ``before_execution`` fails the job like a task error; one raised by
    ``after_execution`` or ``on_error`` is logged and does not change the outcome.
    ``before_execution`` may raise :class:`SkipJob` to not run the job, and
    ``before_execution`` or ``after_execution`` may raise :class:`Retry` to run it
    again (see the module docstring).
    """

    async def before_enqueue(self, job: JobView) -> None:
        """Called in the producer before the job is published."""

    async def after_enqueue(self, job: JobView) -> None:
        """Called in the producer after the broker accepted the job."""

    async def before_execution(self, job: JobView, task_func: Callable[..., Any]) -> None:
        """Called in the worker before the task runs."""

    async def after_execution(
        self, job: JobView, task_func: Callable[..., Any], result: Any
    ) -> Any:
        """Called after the task returned; returns the result to record."""
        return result

    async def on_error(
        self, job: JobView, task_func: Callable[..., Any], exception: BaseException
    ) -> None:
        """Called after the task raised."""


class LogMiddleware(Middleware):
    """Logs each job's start, success and failure with its id, task, attempt and worker.

    Available by name as ``"log"`` (``middleware=["log"]``, ``--middleware log``).
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("uno_jobs.jobs")

    def _extra(self, job: JobView) -> dict[str, Any]:
        return {k: job.get(k) for k in ("id", "task", "attempt", "worker_id", "queue")}

    async def before_execution(self, job: JobView, task_func: Callable[..., Any]) -> None:
        self.log.info(
            "job %s (%s) attempt %s started",
            job["id"],
            job["task"],
            job["attempt"],
            extra={"job": self._extra(job)},
        )

    async def after_execution(
        self, job: JobView, task_func: Callable[..., Any], result: Any
    ) -> Any:
        self.log.info(
            "job %s (%s) succeeded", job["id"], job["task"], extra={"job": self._extra(job)}
        )
        return result

    async def on_error(
        self, job: JobView, task_func: Callable[..., Any], exception: BaseException
    ) -> None:
        self.log.warning(
            "job %s (%s) attempt %s failed: %s: %s",
            job["id"],
            job["task"],
            job["attempt"],
            type(exception).__name__,
            exception,
            extra={"job": self._extra(job)},
        )


class MiddlewareError(Exception):
    """A ``before_execution`` hook raised; the job fails with this error."""

    def __init__(self, middleware: object, cause: BaseException) -> None:
        name = type(middleware).__name__
        super().__init__(
            f"middleware {name}.before_execution raised {type(cause).__name__}: {cause}"
        )
        self.middleware = name


def job_view(fields: dict[str, Any]) -> JobView:
    return MappingProxyType(fields)


def job_fields(message: Message, worker_id: str | None) -> dict[str, Any]:
    """The keys middleware sees (DESIGN.md §1), from a message."""
    return {
        "id": message.id,
        "task": message.task,
        "args": tuple(message.args),
        "kwargs": dict(message.kwargs),
        "queue": message.queue,
        "priority": message.priority,
        "attempt": message.attempt,
        "enqueued_at": message.enqueued_at,
        "headers": dict(message.extra_headers),
        "worker_id": worker_id,
    }


async def _call(hook: Callable[..., Any], *args: Any) -> Any:
    value = hook(*args)
    if inspect.isawaitable(value):
        value = await value
    return value


class MiddlewareChain:
    """Runs a list of middleware in onion order. Empty chains cost nothing."""

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self.middleware = list(middleware)
        self.reversed = list(reversed(self.middleware))

    def __bool__(self) -> bool:
        return bool(self.middleware)

    async def before_enqueue(self, job: JobView) -> None:
        for mw in self.middleware:
            await _call(mw.before_enqueue, job)

    async def after_enqueue(self, job: JobView) -> None:
        for mw in self.reversed:
            try:
                await _call(mw.after_enqueue, job)
            except Exception:
                log.exception("middleware %s.after_enqueue raised", type(mw).__name__)

    async def before_execution(self, job: JobView, func: Callable[..., Any]) -> None:
        """Run every ``before_execution`` in order; the first that raises stops the rest.

        Raises:
            SkipJob: A hook skipped the job; its ``middleware`` names the hook's class.
            Retry: A hook asked for another attempt.
            MiddlewareError: A hook raised anything else; it names the middleware.
        """
        for mw in self.middleware:
            try:
                await _call(mw.before_execution, job, func)
            except SkipJob as skip:
                skip.middleware = type(mw).__name__
                raise
            except Retry:
                raise
            except Exception as exc:
                raise MiddlewareError(mw, exc) from exc

    async def after_execution(self, job: JobView, func: Callable[..., Any], result: Any) -> Any:
        """Run every ``after_execution`` in reverse; returns the result to record.

        Raises:
            Retry: A hook asked for another attempt (the remaining hooks do not run).
        """
        for mw in self.reversed:
            try:
                result = await _call(mw.after_execution, job, func, result)
            except Retry:
                raise
            except Exception:
                log.exception(
                    "middleware %s.after_execution raised; outcome unchanged",
                    type(mw).__name__,
                    extra={"job_id": job.get("id"), "task": job.get("task")},
                )
        return result

    async def on_error(self, job: JobView, func: Callable[..., Any], exc: BaseException) -> None:
        for mw in self.reversed:
            try:
                await _call(mw.on_error, job, func, exc)
            except Exception:
                log.exception(
                    "middleware %s.on_error raised; outcome unchanged",
                    type(mw).__name__,
                    extra={"job_id": job.get("id"), "task": job.get("task")},
                )
