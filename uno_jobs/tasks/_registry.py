"""Where tasks are recorded: :class:`TaskRegistry`, the default registry, and ``@task``.

``@task`` wraps a function in a :class:`Task` and records it in a registry (the default
one unless told otherwise); that is its only side effect: it connects to nothing and
reads no environment (STYLE.md §4). A registry is a thread-safe name → task map that
tells a genuine name clash from one definition imported twice (a module imported under
two names, a script run as ``__main__``).
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, overload

from uno_jobs.errors import ConfigurationError, DuplicateTaskError
from uno_jobs.tasks._task import P, R, Task

__all__ = ["TaskRegistry", "default_registry", "get_default_registry", "task"]


def _same_definition(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """Whether two functions are one definition imported twice (so not a name clash)."""
    if a is b:
        return True
    a_module, b_module = getattr(a, "__module__", None), getattr(b, "__module__", None)
    a_qualname, b_qualname = getattr(a, "__qualname__", None), getattr(b, "__qualname__", None)
    if a_qualname is None or a_qualname != b_qualname:
        return False
    if a_module is not None and a_module == b_module:
        return True
    # A script run as __main__ and also imported under its module name defines each
    # function twice, under two module names: the same source file tells them apart.
    if "__main__" in (a_module, b_module):
        a_code, b_code = getattr(a, "__code__", None), getattr(b, "__code__", None)
        return (
            isinstance(a_code, types.CodeType)
            and isinstance(b_code, types.CodeType)
            and a_code.co_filename == b_code.co_filename
        )
    return False


class TaskRegistry:
    """Tasks by name. Thread-safe; lookups take no lock."""

    def __init__(self) -> None:
        """Create an empty registry."""
        self._tasks: dict[str, Task[..., Any]] = {}
        self._lock = threading.Lock()

    def register(self, task: Task[..., Any]) -> Task[..., Any]:
        """Record ``task`` under ``task.name`` and return it.

        Registering the same function again (its module imported twice) replaces the
        earlier entry.

        Raises:
            DuplicateTaskError: A different function is registered under that name.
            ConfigurationError: ``task`` is not a :class:`Task`.
        """
        if not isinstance(task, Task):
            raise ConfigurationError(f"only Task objects can be registered, got {task!r}")
        with self._lock:
            existing = self._tasks.get(task.name)
            if existing is not None and not _same_definition(existing.func, task.func):
                raise DuplicateTaskError(task.name)
            self._tasks[task.name] = task
        return task

    def unregister(self, name: str) -> Task[..., Any] | None:
        """Remove the task registered as ``name``; return it, or None if there was none."""
        with self._lock:
            return self._tasks.pop(name, None)

    def get(self, name: str) -> Task[..., Any] | None:
        """The task registered as ``name``, or None."""
        return self._tasks.get(name)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._tasks)

    def tasks(self) -> list[Task[..., Any]]:
        """The registered tasks, sorted by name."""
        snapshot = dict(self._tasks)
        return [snapshot[name] for name in sorted(snapshot)]

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"<TaskRegistry with {len(self._tasks)} tasks>"


default_registry = TaskRegistry()
"""The registry ``@task`` records into unless given ``registry=``."""


def get_default_registry() -> TaskRegistry:
    """The registry ``@task`` records into unless given ``registry=``."""
    return default_registry


@overload
def task(func: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    max_retries: int = 0,
    retry_delay: float | None = None,
    timeout: float | None = None,
    queue: str | None = None,
    priority: str = "normal",
    retry_policy: Any = None,
    retry_on: type[BaseException] | Iterable[type[BaseException]] | None = None,
    dont_retry_on: type[BaseException] | Iterable[type[BaseException]] = (),
    registry: TaskRegistry | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    func: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    max_retries: int = 0,
    retry_delay: float | None = None,
    timeout: float | None = None,
    queue: str | None = None,
    priority: str = "normal",
    retry_policy: Any = None,
    retry_on: type[BaseException] | Iterable[type[BaseException]] | None = None,
    dont_retry_on: type[BaseException] | Iterable[type[BaseException]] = (),
    registry: TaskRegistry | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task: ``@task`` or ``@task(name=..., max_retries=..., ...)``.

    The only side effect is recording the task in the registry.

    Args:
        func: The function, when used bare as ``@task``.
        name: The registered name; default ``f"{func.__module__}.{func.__qualname__}"``.
        max_retries: How many times a failed attempt is retried (>= 0).
        retry_delay: Seconds between attempts (>= 0); None lets the retry policy decide.
        timeout: Seconds an attempt may run (> 0); None means no limit.
        queue: The queue used when the task is enqueued without naming one.
        priority: One of ``"critical"``, ``"high"``, ``"normal"``, ``"low"``.
        retry_policy: A retry policy name or object; None: the worker's policy.
        retry_on: Exception classes whose instances are retried (isinstance); None (the
            default) retries every failure, time limits included.
        dont_retry_on: Exception classes whose instances are never retried; wins over
            ``retry_on``. ``raise Retry(...)`` is retried regardless of both.
        registry: Where to record the task; default :data:`default_registry`.

    Returns:
        The :class:`Task`, or a decorator that returns it.

    Raises:
        ConfigurationError: An option is invalid (the message names it and the task).
        DuplicateTaskError: A different function is registered under the same name.
    """
    if registry is not None and not isinstance(registry, TaskRegistry):
        raise ConfigurationError(f"invalid option registry={registry!r}: must be a TaskRegistry")
    target = registry if registry is not None else default_registry

    def decorate(function: Callable[P, R]) -> Task[P, R]:
        created = Task(
            function,
            name=name,
            max_retries=max_retries,
            retry_delay=retry_delay,
            timeout=timeout,
            queue=queue,
            priority=priority,
            retry_policy=retry_policy,
            retry_on=retry_on,
            dont_retry_on=dont_retry_on,
        )
        target.register(created)
        return created

    if func is None:
        return decorate
    if isinstance(func, str):
        raise ConfigurationError(
            f"@task takes keyword options only: write @task(name={func!r}), not @task({func!r})"
        )
    return decorate(func)
