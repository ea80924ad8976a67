"""Executors run task code; they never touch the broker or the store.

Each worker type is the shared base plus one executor: the asyncio executor runs
coroutine tasks on the worker's loop (sync tasks in a thread), the thread executor runs
everything in a fixed pool of threads (a coroutine task gets its own event loop there).
"""

from __future__ import annotations

import asyncio
import contextvars
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


def _call_sync(
    func: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    timeout: float | None = None,
) -> Any:
    """Call ``func`` in this thread; a coroutine function gets an event loop of its own.

    The time limit is applied inside that loop too: a thread waiting in its loop's
    ``select`` cannot be interrupted from outside, but the loop can cancel its coroutine.
    """
    result = func(*args, **kwargs)
    if asyncio.iscoroutine(result):
        return asyncio.run(_with_limit(result, timeout))
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


class _Interrupted(JobTimeLimitExceeded):
    """Raised inside a task's thread when its time limit passed or the worker stopped."""

    def __init__(self, limit: float = 0.0) -> None:
        super().__init__(limit)


class _DaemonThreadPool:
    """Threads that do not hold the process open at exit, and can be interrupted.

    ``concurrent.futures`` joins its threads when the interpreter exits, so a task stuck
    in a sync call would keep a worker alive after an immediate shutdown. These threads
    are daemons: once the worker has handed the job back, the process may exit.

    ``interrupt`` raises an exception inside the thread running a call (CPython's
    ``PyThreadState_SetAsyncExc``). It takes effect at the thread's next Python bytecode:
    a blocking C call (``time.sleep``, a socket read, a C extension) finishes first, and
    the thread's slot is free only once the call has unwound.

    Threads start as calls need them, up to ``threads`` (as ``ThreadPoolExecutor``'s do):
    a call starts a thread unless one is idle. An AsyncWorker whose tasks are coroutines
    then keeps no thread for sync tasks at all, and an idle worker holds no thread stacks
    or allocator arenas it never used.
    """

    def __init__(self, threads: int, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._running: dict[int, asyncio.Future[Any]] = {}
        self._lock = threading.Lock()
        self._name = name
        self._max_threads = threads
        self._threads: list[threading.Thread] = []
        # One permit per call a thread finished: that thread is waiting for the next one.
        self._idle = threading.Semaphore(0)

    def submit(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # The caller's context (its current trace span) goes with the call to the thread.
        self._calls.put((functools.partial(contextvars.copy_context().run, call), loop, future))
        if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_threads:
            thread = threading.Thread(
                target=self._serve, name=f"uno-{self._name}-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return future

    def _serve(self) -> None:
        while True:
            try:
                if not self._serve_one():
                    return
            except _Interrupted:
                continue  # it arrived after its call had returned: nothing to stop

    def _serve_one(self) -> bool:
        item = self._calls.get()
        if item is None:
            return False
        call, loop, future = item
        if future.cancelled():
            self._idle.release()
            return True
        ident = threading.get_ident()
        with self._lock:
            self._running[ident] = future
        result: Any = None
        error: BaseException | None = None
        try:
            result = call()
        except BaseException as exc:  # handed to the awaiting job
            error = exc
        finally:
            with self._lock:
                self._running.pop(ident, None)
        self._idle.release()  # before the result: the job's next call may come at once
        loop.call_soon_threadsafe(_settle, future, result, error)
        return True

    def interrupt(self, future: asyncio.Future[Any] | None = None) -> int:
        """Interrupt the thread running ``future`` (or every running one); returns how many."""
        import ctypes  # here: only workers that interrupt a thread need it

        count = 0
        with self._lock:
            for ident, running in self._running.items():
                if future is None or running is future:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(ident), ctypes.py_object(_Interrupted)
                    )
                    count += 1
        return count

    def shutdown(self, wait: bool) -> None:
        if not wait:
            self.interrupt()
        threads = list(self._threads)
        self._max_threads = 0  # no thread starts after this
        for _ in threads:
            self._calls.put(None)
        if wait:
            for thread in threads:
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

    At a time limit the job fails at once and the call is interrupted inside its thread
    (see ``_DaemonThreadPool.interrupt`` for what Python can and cannot interrupt).
    """

    def __init__(self, threads: int, name: str) -> None:
        self._pool = _DaemonThreadPool(threads, name)

    async def run(
        self, task: Task[..., Any], args: list[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        future = self._pool.submit(functools.partial(_call_sync, task.func, args, kwargs, timeout))
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            if not task.is_async:
                # A coroutine is cancelled by its own loop at the same limit; an exception
                # raised into that loop would leave it unclosed.
                self._pool.interrupt(future)
            raise JobTimeLimitExceeded(timeout) from None

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
