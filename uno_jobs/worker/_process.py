"""``ProcessPoolWorker``: jobs run in child processes that the worker supervises itself.

::

    event loop (parent): before_execution ─► ProcessExecutor.run ─► after / on_error
        run: idle child? ─► pipe: ("run", task ref, args, kwargs) ─► await its answer
             time limit passed? ─► SIGKILL that child, start a replacement
    reader thread per child: pipe ─► answer ─► loop.call_soon_threadsafe ─► the job's future
                             EOF  ─► reap ─► died mid-job? WorkerLostError; start a replacement

Each child is its own slot: killing one (a time limit, a crash) touches no other job,
unlike ``concurrent.futures.ProcessPoolExecutor``, where a dead child breaks the whole
pool. The parent keeps the broker connection, the job store and the middleware; a child
only runs task functions (see ``_child.py`` for its side of the pipe).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, ClassVar, cast

from pydantic import Field

from uno_jobs.errors import WorkerStateError
from uno_jobs.plugins import get_plugins
from uno_jobs.tasks import Task
from uno_jobs.tracing import current_carrier, sdk_configured, tracing_enabled
from uno_jobs.worker._base import BaseWorker
from uno_jobs.worker._child import ChildBoot, serve
from uno_jobs.worker._executors import Executor, JobTimeLimitExceeded, WorkerLostError
from uno_jobs.worker._options import WorkerOptions

__all__ = ["ProcessExecutor", "ProcessPoolWorker", "ProcessPoolWorkerOptions", "RemoteTaskError"]

log = logging.getLogger("uno_jobs.worker.process")

_BOOT_TIMEOUT_SECONDS = 120.0
# How long an immediate shutdown lets idle children exit cleanly before killing them.
_STOP_GRACE_SECONDS = 2.0
_RESPAWN_DELAY_MAX_SECONDS = 30.0
_MIB = 1024 * 1024


def _default_processes() -> int:
    return os.cpu_count() or 1


class ProcessPoolWorkerOptions(WorkerOptions):
    """Options of ``ProcessPoolWorker``: the common ones plus the pool's.

    Attributes:
        max_processes: Child processes, each running one job at a time (default: the
            number of CPUs).
        max_tasks_per_child: Replace a child after it ran this many jobs (``None``: never).
        max_memory_per_child_mb: Replace a child whose resident memory exceeds this many
            MiB after a job (``None``: no ceiling). The job itself completes normally.
    """

    concurrency_option: ClassVar[str | None] = "max_processes"
    max_processes: int = Field(default_factory=_default_processes, ge=1, le=1024)
    max_tasks_per_child: int | None = Field(None, ge=1)
    max_memory_per_child_mb: float | None = Field(None, gt=0)


class RemoteTaskError(Exception):
    """A task's exception that could not be sent back from its child process as is.

    The worker raises a subclass named like the original class (``type(exc).__name__``
    is the original name, and so is the error type recorded for the job), carrying the
    original message; the child's traceback is its ``__cause__``.
    """


class _RemoteTraceback(Exception):
    """The traceback text of an exception raised in a child, shown as the cause."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


_remote_classes: dict[tuple[str, str], type[RemoteTaskError]] = {}


def _remote_class(module: str, qualname: str) -> type[RemoteTaskError]:
    key = (module, qualname)
    cls = _remote_classes.get(key)
    if cls is None:
        name = qualname.rsplit(".", 1)[-1]
        namespace = {"__module__": module, "__qualname__": qualname}
        cls = _remote_classes[key] = type(name, (RemoteTaskError,), namespace)
    return cls


def rebuild_exception(answer: tuple[Any, ...]) -> Exception:
    """The exception a child reported, rebuilt in the parent.

    The original exception if it pickles (and is an ``Exception``), else a
    :class:`RemoteTaskError` subclass of the same name and message. Either way its
    ``__cause__`` holds the child's traceback text.
    """
    _, payload, module, qualname, message, text, _ = answer
    exc: Any = None
    if payload is not None:
        try:
            exc = pickle.loads(payload)
        except Exception:
            exc = None
    if not isinstance(exc, Exception):
        module = "__main__" if module == "__mp_main__" else module
        exc = _remote_class(module, qualname)(message)
    if text:
        exc.__cause__ = _RemoteTraceback(text)
    return cast(Exception, exc)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exited (status unknown)"
    if exitcode < 0:
        try:
            return f"died with signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"died with signal {-exitcode}"
    return f"exited with code {exitcode}"


class _Child:
    """One child process. Loop-thread state, except ``send``/``kill`` and the events."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.pid: int = process.pid or 0
        self.ready = False  # set on the loop thread when its "ready" is handled
        self.booted = threading.Event()  # ready, failed to boot, or gone (reader thread)
        self.boot_error: str | None = None
        self.reaped = threading.Event()
        self.exitcode: int | None = None
        self.jobs = 0
        self.future: asyncio.Future[tuple[Any, ...]] | None = None
        # Replaced already (stopped, recycled, or killed at a time limit): its exit is
        # expected and its answers are ignored.
        self.retired = False
        self._send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...] | None) -> None:
        with self._send_lock:
            self.conn.send(message)

    def stop(self) -> None:
        """Ask the child to exit once it is idle; kill it if the pipe is gone."""
        try:
            self.send(None)
        except (OSError, ValueError):
            self.kill()

    def kill(self) -> None:
        if self.reaped.is_set():
            return
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()


class ProcessExecutor(Executor):
    """Runs each job in one of ``processes`` supervised child processes.

    Call :meth:`start` (blocking) before the first ``run``. ``run`` must be awaited on
    the loop given here; ``shutdown`` may be called from any thread.
    """

    def __init__(
        self,
        processes: int,
        loop: asyncio.AbstractEventLoop,
        boot: ChildBoot,
        *,
        name: str = "uno",
        max_tasks_per_child: int | None = None,
        max_memory_per_child_mb: float | None = None,
    ) -> None:
        self._processes = processes
        self._loop = loop
        self._boot = boot
        self._name = name
        self._max_tasks = max_tasks_per_child
        self._max_rss = None if max_memory_per_child_mb is None else max_memory_per_child_mb * _MIB
        # Fresh interpreters: forking a process that runs an event loop and broker threads
        # would copy their locks in whatever state they are in.
        self._context = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._boot_failures = 0
        self._spawned = 0

    @property
    def pids(self) -> list[int]:
        """The process ids of the live children (for operators and tests)."""
        with self._lock:
            return sorted(c.pid for c in self._children if not c.reaped.is_set())

    # -- children -------------------------------------------------------------------------

    def start(self, timeout: float = _BOOT_TIMEOUT_SECONDS) -> None:
        """Start the children and wait until each has booted.

        Raises:
            WorkerStateError: A child failed to boot (its traceback is in the message) or
                did not report ready within ``timeout`` seconds.
        """
        _register_exit_handler(self)
        children = [self._spawn() for _ in range(self._processes)]
        deadline = time.monotonic() + timeout
        for child in children:
            if child is None:
                continue
            child.booted.wait(max(0.0, deadline - time.monotonic()))
            problem = child.boot_error
            if problem is None and not child.booted.is_set():
                problem = f"no ready message within {timeout:g} s"
            elif problem is None and child.reaped.is_set():
                problem = (
                    f"it {_describe_exit(child.exitcode)} while booting (its error is on "
                    "stderr; a script that starts this worker must do so under "
                    '`if __name__ == "__main__":`, since each child imports it again)'
                )
            if problem is not None:
                self.shutdown(wait=False)
                raise WorkerStateError(
                    f"process-pool child pid {child.pid} of {self._name} failed to boot: {problem}"
                )

    def _spawn(self) -> _Child | None:
        """Start one child (any thread); ``None`` once the executor is shut down."""
        with self._lock:
            if self._closed:
                return None
            self._spawned += 1
            parent_end, child_end = self._context.Pipe(duplex=True)
            process = self._context.Process(
                target=serve,
                args=(child_end, self._boot),
                name=f"uno-{self._name}-child-{self._spawned}",
                # Not a daemon, so a task may start processes of its own; the exit handler
                # and the child's parent watch keep children from outliving the worker.
                daemon=False,
            )
            try:
                process.start()
            finally:
                child_end.close()
            child = _Child(process, parent_end)
            self._children.add(child)
        reader = threading.Thread(
            target=self._read, args=(child,), name=f"uno-child-{child.pid}", daemon=True
        )
        reader.start()
        return child

    def _read(self, child: _Child) -> None:
        """The reader thread of one child: hand its messages to the loop; reap it."""
        while True:
            try:
                message = child.conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # a result that does not unpickle here
                message = _unreadable_answer(exc)
            if message[0] == "boot_error":
                child.boot_error = str(message[1])
            if message[0] in ("ready", "boot_error"):
                child.booted.set()
            self._post(self._on_message, child, message)
        child.conn.close()
        child.process.join()
        # Another thread's waitpid (multiprocessing's own clean-up) may have reaped it.
        for _ in range(100):
            child.exitcode = child.process.exitcode
            if child.exitcode is not None:
                break
            time.sleep(0.01)
        child.reaped.set()
        child.booted.set()
        self._post(self._on_exit, child)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        # A closed loop: the worker is gone and nobody awaits this any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _on_message(self, child: _Child, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            child.ready = True
            self._boot_failures = 0
            for warning in message[2]:
                log.warning("process-pool child pid %d: %s", child.pid, warning)
            self._release(child)
        elif kind == "boot_error":
            log.error("process-pool child pid %d failed to boot:\n%s", child.pid, message[1])
        elif not child.retired:
            future, child.future = child.future, None
            child.jobs += 1
            if future is not None and not future.done():
                future.set_result(message)
            reason = self._recycle_reason(child, message[-1])
            if reason is None:
                self._release(child)
            else:
                log.info("process-pool child pid %d recycled: %s", child.pid, reason)
                self._retire(child)

    def _recycle_reason(self, child: _Child, rss: int) -> str | None:
        if self._max_tasks is not None and child.jobs >= self._max_tasks:
            return f"it ran {child.jobs} jobs (max_tasks_per_child={self._max_tasks})"
        if self._max_rss is not None and rss > self._max_rss:
            return (
                f"resident memory {rss / _MIB:.1f} MiB > max_memory_per_child_mb="
                f"{self._max_rss / _MIB:g}"
            )
        return None

    def _on_exit(self, child: _Child) -> None:
        with self._lock:
            self._children.discard(child)
        try:
            get_plugins().child_exited(child.pid)
        except Exception:  # a plugin's clean-up must not stop the pool replacing the child
            log.exception("uno_jobs_child_exited hook for child pid %d raised", child.pid)
        if child.retired:
            return
        child.retired = True
        how = _describe_exit(child.exitcode)
        future, child.future = child.future, None
        if future is not None:
            # A cancelled future: its job was abandoned a moment ago (the worker is
            # shutting down) and its coroutine replaces the child; nothing to report.
            if not future.done():
                future.set_exception(WorkerLostError(f"child pid {child.pid} {how}"))
        elif not child.ready:
            self._boot_failures += 1
            delay = min(_RESPAWN_DELAY_MAX_SECONDS, 0.5 * 2**self._boot_failures)
            if not self._closed:
                log.error(
                    "process-pool child pid %d %s while booting; next attempt in %g s",
                    child.pid,
                    how,
                    delay,
                )
                self._loop.call_later(delay, self._spawn)
            return
        elif not self._closed:
            log.warning("process-pool child pid %d %s while idle; replacing it", child.pid, how)
        self._spawn()

    def _release(self, child: _Child) -> None:
        if self._closed:
            child.stop()
        else:
            self._idle.put_nowait(child)

    def _retire(self, child: _Child) -> None:
        """Replace ``child``: it exits once idle (or at once, if it was killed)."""
        child.retired = True
        child.stop()
        self._spawn()

    # -- jobs -----------------------------------------------------------------------------

    async def run(
        self, task: Task[..., Any], args: list[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        """Run ``task`` in an idle child; return its result or raise its exception.

        Raises:
            JobTimeLimitExceeded: ``timeout`` passed; the child was killed and replaced.
            WorkerLostError: The child died before answering.
            Exception: What the task raised (see :func:`rebuild_exception`).
        """
        func = task.func
        request = (
            "run",
            task.name,
            getattr(func, "__module__", None),
            getattr(func, "__qualname__", None),
            args,
            kwargs,
            current_carrier() if tracing_enabled() else None,
        )
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise WorkerStateError("the process pool is shut down")
            child = await self._idle.get()
            if child.retired or child.reaped.is_set():
                continue
            future: asyncio.Future[tuple[Any, ...]] = loop.create_future()
            child.future = future
            try:
                child.send(request)
            except (OSError, ValueError):
                # It died between jobs: the job never reached it. Its reader replaces it.
                child.future = None
                continue
            break
        timer = None if timeout is None else loop.call_later(timeout, self._expire, child, timeout)
        try:
            answer = await future
        except asyncio.CancelledError:
            if child.future is future:
                # The job was abandoned (immediate shutdown): its child is not reusable.
                child.future = None
                child.retired = True
                child.kill()
                self._spawn()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if answer[0] == "ok":
            return answer[1]
        raise rebuild_exception(answer)

    def _expire(self, child: _Child, limit: float) -> None:
        future, child.future = child.future, None
        if future is None or future.done():
            return
        child.retired = True
        child.kill()
        log.warning(
            "process-pool child pid %d killed: its job passed the time limit of %g s",
            child.pid,
            limit,
        )
        future.set_exception(JobTimeLimitExceeded(limit))
        self._spawn()

    # -- shutdown -------------------------------------------------------------------------

    def shutdown(self, wait: bool) -> None:
        """Stop every child and reap it.

        Args:
            wait: ``True``: each child finishes its job, then exits; this blocks until
                they have (call it from a thread, not the loop). ``False``: children
                running a job are killed at once; idle ones get a moment to exit cleanly
                (plugins' exit handlers run), then are killed too.
        """
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            if not child.booted.is_set() or (child.future is not None and not wait):
                child.kill()
            else:
                child.stop()
        deadline = None if wait else time.monotonic() + _STOP_GRACE_SECONDS
        for child in children:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not child.reaped.wait(remaining):
                child.kill()
                child.reaped.wait(10.0)
        _live_executors.discard(self)


def _unreadable_answer(exc: Exception) -> tuple[Any, ...]:
    message = f"the task's result cannot be read by the worker: {type(exc).__name__}: {exc}"
    return ("error", None, "builtins", "TypeError", message, "", 0)


_live_executors: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()
_exit_handler_registered = False


def _register_exit_handler(executor: ProcessExecutor) -> None:
    """Kill the children of executors still open when the interpreter exits.

    Registered after ``multiprocessing`` registered its own exit function, so it runs
    first (atexit is last-in, first-out) and that function's join of non-daemon children
    does not wait for children nobody stopped.
    """
    global _exit_handler_registered
    _live_executors.add(executor)
    if not _exit_handler_registered:
        import multiprocessing.util  # noqa: F401 - registers its exit function first

        atexit.register(_shutdown_live_executors)
        _exit_handler_registered = True


def _shutdown_live_executors() -> None:
    for executor in list(_live_executors):
        executor.shutdown(wait=False)


class ProcessPoolWorker(BaseWorker):
    """Runs up to ``max_processes`` jobs at once, each in a child process of its own.

    For CPU-bound tasks: children are separate interpreters, so jobs run in parallel
    beyond the GIL. The worker process keeps the broker connection, the job store and
    the middleware (hooks see ``os.getpid()`` of the worker); children only run task
    functions, coroutine functions included (with ``asyncio.run``).

    - A job past its time limit (``@task(timeout=...)`` or ``max_job_duration``) has its
      child killed (SIGKILL) and replaced; it fails with ``JobTimeLimitExceeded``.
    - A child that dies mid-job (a signal, a segfault, ``os._exit``) is replaced; the job
      goes back to the broker with its worker-lost count raised, and its third loss makes
      it ``dead`` with reason ``worker_lost`` (apart from ``max_retries``).
    - ``max_tasks_per_child`` and ``max_memory_per_child_mb`` replace children gracefully
      after a job.
    - Children ignore SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): the
      worker decides, letting running jobs finish or killing their children. A child
      whose worker process is gone exits by itself, mid-job included.

    Children are started with ``spawn``: each imports the modules of the registered tasks
    and runs the ``uno_jobs_child_boot`` plugin hook. A task must be reachable in a fresh
    interpreter: defined at module level (a script run as ``__main__`` works, it is
    re-imported as ``__mp_main__``; tasks defined inside functions or in an interactive
    session do not). Arguments and results cross a pipe, pickled.
    """

    options_model: ClassVar[type[WorkerOptions]] = ProcessPoolWorkerOptions

    def make_executor(self) -> Executor:
        """Start the children (called in a thread by ``start``); returns once they booted."""
        assert self._loop is not None
        opts = cast(ProcessPoolWorkerOptions, self.options)
        registry = self._resolver.registry
        # Tasks found later by module path are imported on first use, as in the parent.
        modules = {getattr(t.func, "__module__", None) for t in registry.tasks()}
        boot = ChildBoot(
            modules=tuple(sorted(m for m in modules if m and m not in _MAIN_MODULES)),
            allowed_modules=self._resolver.allowed_modules,
            parent_pid=os.getpid(),
            log_level=logging.getLogger().getEffectiveLevel(),
            measure_memory=opts.max_memory_per_child_mb is not None,
            configure_tracing=sdk_configured(),
        )
        executor = ProcessExecutor(
            self.concurrency,
            self._loop,
            boot,
            name=self.worker_id,
            max_tasks_per_child=opts.max_tasks_per_child,
            max_memory_per_child_mb=opts.max_memory_per_child_mb,
        )
        executor.start()
        return executor

    @property
    def child_pids(self) -> list[int]:
        """Process ids of the live child processes (empty before start and after stop)."""
        executor = self._executor
        return executor.pids if isinstance(executor, ProcessExecutor) else []


# Spawn re-runs the parent's main script itself (as __mp_main__); importing it by name
# would run it a second time.
_MAIN_MODULES = frozenset({"__main__", "__mp_main__"})
