"""Executors run task code; they never touch the broker or the store.

Each worker type is the shared base plus one executor: the asyncio executor runs
coroutine tasks on the worker's loop (sync tasks in a thread), the thread executor runs
everything in a fixed pool of threads (a coroutine task gets its own event loop there).
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any

from uno_jobs.tasks import Task

__all__ = [
    "AsyncExecutor",
    "Executor",
    "JobTimeLimitExceeded",
    "ThreadExecutor",
    "WorkerLostError",
]


class JobTimeLimitExceeded(BaseException):
    """A job ran past its time limit.

    Derives from ``BaseException`` so that a task's ``except Exception`` cannot swallow
    it when it is raised inside the task.
    """

    def __init__(self, limit: float) -> None:
        super().__init__(f"job exceeded its time limit of {limit:g} s")
        self.limit = limit


def _call_sync(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    result = func(*args, **kwargs)
    if asyncio.iscoroutine(result):
        return asyncio.run(result)
    return result


class WorkerLostError(Exception):
    """The process running a job died before answering (a process-pool child killed by a
    signal, a segfault or ``os._exit``). The job is handed back, not failed."""


class Executor:
    """Runs one task call; ``run`` raises what the task raised."""

    async def run(
        self, task: Task[..., Any], args: list[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        raise NotImplementedError

    def shutdown(self, wait: bool) -> None:
        """Release threads; with ``wait=False`` running calls are abandoned."""


async def _with_limit(awaitable: Any, timeout: float | None) -> Any:
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise JobTimeLimitExceeded(timeout) from None


class _DaemonThreadPool:
    """Threads that do not hold the process open at exit.

    ``concurrent.futures`` joins its threads when the interpreter exits, so a task stuck
    in a sync call would keep a worker alive after an immediate shutdown. These threads
    are daemons: once the worker has handed the job back, the process may exit.
    """

    def __init__(self, threads: int, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"uno-{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((call, loop, future))
        return future

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            call, loop, future = item
            if future.cancelled():
                continue
            try:
                result = call()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def shutdown(self, wait: bool) -> None:
        for _ in self._threads:
            self._calls.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class ThreadExecutor(Executor):
    """A fixed pool of threads (SyncWorker: one; ThreadPoolWorker: ``max_threads``).

    A time limit stops waiting for the call and fails the job; Python cannot interrupt
    the thread itself, so its slot frees only when the call returns.
    """

    def __init__(self, threads: int, name: str) -> None:
        self._pool = _DaemonThreadPool(threads, name)

    async def run(
        self, task: Task[..., Any], args: list[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        call = functools.partial(_call_sync, task.func, args, kwargs)
        return await _with_limit(self._pool.submit(call), timeout)

    def shutdown(self, wait: bool) -> None:
        self._pool.shutdown(wait)


class AsyncExecutor(Executor):
    """Coroutine tasks run on the worker's loop, cancelled at their time limit."""

    def __init__(self, threads: int, name: str) -> None:
        self._threads = ThreadExecutor(threads, name)

    async def run(
        self, task: Task[..., Any], args: list[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        if task.is_async:
            return await _with_limit(task.func(*args, **kwargs), timeout)
        return await self._threads.run(task, args, kwargs, timeout)

    def shutdown(self, wait: bool) -> None:
        self._threads.shutdown(wait)
