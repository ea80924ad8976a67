"""The code that runs inside a ``ProcessPoolWorker`` child process.

A child is started with the ``spawn`` method: a fresh interpreter that imports the task
modules it is told about, runs the ``uno_jobs_child_boot`` plugin hook, reports ready, and
then runs one job at a time for as long as the parent sends them. It never touches the
broker or the job store.

The parent and the child talk over one duplex pipe, in pickled tuples::

    parent → child   ("run", name, module, qualname, args, kwargs, trace carrier)
                     None: exit
    child → parent   ("ready", pid, warnings)      ("boot_error", traceback text)
                     ("ok", result, rss_bytes)
                     ("error", pickled exception or None, module, qualname, message,
                      traceback text, rss_bytes)

A task is found by the module and qualified name of its function (the parent already
resolved and checked the task name), else by its name through a ``TaskResolver``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pickle
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import parent_process
from multiprocessing.connection import Connection
from typing import Any

from uno_jobs.tracing import configure_sdk, shutdown_sdk, use_context

__all__ = ["ChildBoot", "serve"]

log = logging.getLogger("uno_jobs.worker.child")

# How often an orphaned child notices, at worst, that its parent is gone.
_PARENT_CHECK_SECONDS = 0.5
# Exit status of a child that found its parent gone.
_ORPHAN_EXIT = 70


@dataclass(frozen=True)
class ChildBoot:
    """What a child needs to know at start, sent once by the parent.

    Attributes:
        modules: Modules to import at boot (those that define the registered tasks).
        allowed_modules: Prefixes a task name may be imported from (``TaskResolver``).
        parent_pid: The worker process; the child exits when it is gone.
        log_level: The parent's root log level, used if the boot hook sets up no logging.
        measure_memory: Report the resident set size with every answer.
        configure_tracing: The parent installed the OpenTelemetry SDK from the ``OTEL_*``
            variables (``uno_jobs.tracing.configure_sdk``): the child does the same, so the
            spans its tasks open are exported too.
    """

    modules: tuple[str, ...]
    allowed_modules: tuple[str, ...]
    parent_pid: int
    log_level: int
    measure_memory: bool
    configure_tracing: bool = False


def serve(conn: Connection, boot: ChildBoot) -> None:
    """The child's entry point: boot, report ready, then run jobs until told to stop."""
    # Ctrl-C and a SIGTERM sent to the process group are the parent's to handle: it lets
    # the running job finish (graceful) or kills this child itself (immediate).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _watch_parent(boot.parent_pid)
    try:
        warnings = _boot(boot)
        runner = _Runner(boot)
    except BaseException:
        _send_quietly(conn, ("boot_error", traceback.format_exc()))
        return
    try:
        if _send_quietly(conn, ("ready", os.getpid(), warnings)):
            _serve_jobs(conn, runner)
    finally:
        # A child ends with os._exit (no atexit handlers): export its spans now.
        shutdown_sdk()


def _serve_jobs(conn: Connection, runner: _Runner) -> None:
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or is gone
        if request is None:
            return
        answer = runner.run(request)
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return
        except Exception as exc:  # the result does not pickle: the job fails with why
            failure = TypeError(f"the task's result cannot be sent to the worker: {exc}")
            if not _send_quietly(conn, _error_answer(failure, answer[-1])):
                return


def _send_quietly(conn: Connection, message: tuple[Any, ...]) -> bool:
    try:
        conn.send(message)
    except (EOFError, OSError):
        return False
    return True


def _watch_parent(parent_pid: int) -> None:
    """Exit when the worker process is gone, even in the middle of a job."""

    def watch() -> None:
        parent = parent_process()
        while True:
            if parent is not None:
                parent.join(_PARENT_CHECK_SECONDS)  # returns at once when the parent ends
            else:
                threading.Event().wait(_PARENT_CHECK_SECONDS)
            if os.getppid() != parent_pid or (parent is not None and not parent.is_alive()):
                os._exit(_ORPHAN_EXIT)

    threading.Thread(target=watch, name="uno-parent-watch", daemon=True).start()


def _boot(boot: ChildBoot) -> list[str]:
    """Import the task modules and run the boot hook; returns warnings for the parent."""
    warnings: list[str] = []
    for name in boot.modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            warnings.append(f"cannot import {name!r}: {type(exc).__name__}: {exc}")
    from uno_jobs.plugins import get_plugins

    if boot.configure_tracing:
        configure_sdk()
    get_plugins().child_boot()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=boot.log_level,
            format="%(asctime)s %(levelname)s [child %(process)d] %(name)s: %(message)s",
        )
    return warnings


class _Runner:
    """Finds task functions (cached) and runs one job at a time."""

    def __init__(self, boot: ChildBoot) -> None:
        from uno_jobs.tasks import TaskResolver, get_default_registry

        self._resolver = TaskResolver(get_default_registry(), boot.allowed_modules)
        self._functions: dict[tuple[str, str | None, str | None], Callable[..., Any]] = {}
        self._measure = boot.measure_memory

    def run(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        _, name, module, qualname, args, kwargs, carrier = request
        try:
            func = self._function(name, module, qualname)
            # Spans the task opens nest under the worker's "process {queue}" span.
            with use_context(carrier):
                result = func(*args, **kwargs)
                if asyncio.iscoroutine(result):
                    result = asyncio.run(result)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt are task errors here
            return _error_answer(exc, self._rss())
        return ("ok", result, self._rss())

    def _rss(self) -> int:
        return resident_bytes() if self._measure else 0

    def _function(self, name: str, module: str | None, qualname: str | None) -> Any:
        key = (name, module, qualname)
        func = self._functions.get(key)
        if func is None:
            func = self._functions[key] = self._find(name, module, qualname)
        return func

    def _find(self, name: str, module: str | None, qualname: str | None) -> Callable[..., Any]:
        from uno_jobs.errors import TaskError, UnknownTaskError
        from uno_jobs.tasks import Task

        if module and qualname and "<locals>" not in qualname:
            # The parent resolved and checked this task; its function's own location is
            # the most direct way back to it (it also works for tasks of a script run as
            # __main__, which spawn re-imports as __mp_main__ under that alias).
            try:
                target: Any = importlib.import_module(module)
                for part in qualname.split("."):
                    target = getattr(target, part)
            except Exception:
                target = None
            if isinstance(target, Task):
                return target.func
            if callable(target) and getattr(target, "__qualname__", None) == qualname:
                return target  # type: ignore[no-any-return]
        candidates = [name]
        if name.startswith("__main__."):
            candidates.append("__mp_main__." + name.removeprefix("__main__."))
        for candidate in candidates:
            try:
                return self._resolver.resolve(candidate).func
            except TaskError:
                continue
        raise UnknownTaskError(
            name,
            f"task {name!r} cannot be found in the process-pool child: it must be defined "
            f"at module level in an importable module (its function is "
            f"{module}.{qualname})",
        )


def resident_bytes() -> int:
    """This process's resident set size in bytes (0 if it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        # Not the current size but the peak (in KiB on Linux, bytes on macOS): an
        # over-estimate, which only makes recycling happen earlier.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if os.uname().sysname == "Darwin" else peak * 1024)
    except (ImportError, OSError):
        return 0


def _error_answer(exc: BaseException, rss: int) -> tuple[Any, ...]:
    cls = type(exc)
    text = "".join(traceback.format_exception(exc))
    try:
        message = str(exc)
    except Exception:
        message = f"<{cls.__name__}: str() failed>"
    payload: bytes | None = None
    if isinstance(exc, Exception):
        try:
            payload = pickle.dumps(exc)
            # Some exceptions pickle but do not unpickle (a required __init__ argument
            # that is not in args): find out here, where the traceback is still known.
            pickle.loads(payload)
        except Exception:
            payload = None
    return ("error", payload, cls.__module__, cls.__qualname__, message, text, rss)
