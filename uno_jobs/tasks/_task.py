"""The :class:`Task` object: a function and its options, checked once, at decoration.

A task is a function plus its options (retries, delay, which exceptions are retried, time
limit, default queue, priority). Every option is validated here, when the module that
defines the task is imported, so a typo fails with the option's and the task's name
instead of at the first run. Where tasks are recorded and how ``@task`` records them is
``_registry.py``; how a worker finds them by name is ``_resolver.py``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar

from uno_jobs.errors import ConfigurationError
from uno_jobs.message import PRIORITY_LEVELS

__all__ = ["MAX_TASK_NAME_LENGTH", "ExceptionTypes", "Task"]

P = ParamSpec("P")
R = TypeVar("R")

#: What ``retry_on`` / ``dont_retry_on`` hold once validated.
ExceptionTypes = tuple[type[BaseException], ...]

MAX_TASK_NAME_LENGTH = 256
"""Longer task names are refused, both at registration and at resolution."""


class Task(Generic[P, R]):
    """A function registered as a task, with its options.

    Calling the task calls the function directly (``await report("m", "pdf")`` for an
    async one); running it as a job goes through a queue and a worker.

    Attributes:
        name: The registered name: ``name=`` if given, else ``module.qualname``.
        func: The decorated function.
        max_retries: How many times a failed attempt is retried (0: never).
        retry_delay: Seconds between attempts; ``None`` lets the retry policy decide.
        timeout: Seconds an attempt may run before it is stopped; ``None``: no limit.
        queue: The queue used when the task is enqueued without naming one.
        priority: One of :data:`PRIORITY_LEVELS`.
        retry_policy: A retry policy name (``"fixed"``, ``"exponential"`` or a plugin's)
            or object with ``next_delay``; ``None``: the worker's policy.
        retry_on: Only failures that are instances of these are retried; ``None``: every
            failure (any ``Exception``, and time limits).
        dont_retry_on: Failures that are instances of these are never retried; this wins
            over ``retry_on``.
        is_async: True when ``func`` is a coroutine function.
    """

    name: str
    func: Callable[P, R]
    max_retries: int
    retry_delay: float | None
    timeout: float | None
    queue: str | None
    priority: str
    retry_policy: Any
    retry_on: ExceptionTypes | None
    dont_retry_on: ExceptionTypes
    is_async: bool
    __wrapped__: Callable[P, R]
    __name__: str
    __qualname__: str

    def __init__(
        self,
        func: Callable[P, R],
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
    ) -> None:
        """Wrap ``func``; validate the options.

        Raises:
            ConfigurationError: An option is invalid; the message names it and the task.
        """
        if isinstance(func, Task):
            raise ConfigurationError(f"{func.name!r} is already a task; decorate it once")
        if not callable(func):
            raise ConfigurationError(f"@task needs a function, got {type(func).__name__}")
        functools.update_wrapper(self, func)
        # Set after update_wrapper, which copies the function's __dict__ onto this object.
        self.func = func
        self.name = _check_name(name, func)
        self.max_retries = _check_max_retries(max_retries, self.name)
        self.retry_delay = _check_seconds("retry_delay", retry_delay, self.name, allow_zero=True)
        self.timeout = _check_seconds("timeout", timeout, self.name, allow_zero=False)
        self.queue = _check_queue(queue, self.name)
        self.priority = _check_priority(priority, self.name)
        self.retry_policy = _check_retry_policy(retry_policy, self.name)
        self.retry_on, self.dont_retry_on = _check_retry_filters(retry_on, dont_retry_on, self.name)
        self.is_async = inspect.iscoroutinefunction(func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function in this process, as if it were not decorated."""
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name!r}>"

    def __reduce__(self) -> str:
        # Pickle by reference, as pickle does for functions: the module attribute holds
        # this Task (the decorator replaced the function), so unpickling imports the module.
        return self.__qualname__


def _func_label(func: Callable[..., Any]) -> str:
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return str(qualname) if qualname else repr(func)


def _check_name(name: str | None, func: Callable[..., Any]) -> str:
    if name is None:
        module = getattr(func, "__module__", None)
        qualname = getattr(func, "__qualname__", None)
        if not module or not qualname:
            raise ConfigurationError(
                f"cannot derive a task name for {func!r}: pass @task(name=...)"
            )
        name = f"{module}.{qualname}"
    elif not isinstance(name, str) or not name or name != name.strip():
        raise ConfigurationError(
            f"invalid option name={name!r} for task {_func_label(func)!r}: "
            "must be a non-empty string without surrounding whitespace"
        )
    if len(name) > MAX_TASK_NAME_LENGTH:
        raise ConfigurationError(
            f"invalid option name for task {_func_label(func)!r}: {len(name)} characters "
            f"long (limit {MAX_TASK_NAME_LENGTH})"
        )
    return name


def _option_error(option: str, value: object, task_name: str, rule: str) -> ConfigurationError:
    return ConfigurationError(
        f"invalid option {option}={value!r} for task {task_name!r}: must be {rule}"
    )


def _check_max_retries(value: int, task_name: str) -> int:
    # bool is an int subclass; max_retries=True is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _option_error("max_retries", value, task_name, "an integer >= 0")
    return value


def _check_seconds(
    option: str, value: float | None, task_name: str, *, allow_zero: bool
) -> float | None:
    if value is None:
        return None
    rule = "a finite number of seconds " + (">= 0" if allow_zero else "> 0") + ", or None"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _option_error(option, value, task_name, rule)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise _option_error(option, value, task_name, rule)
    return seconds


def _check_queue(value: str | None, task_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or value != value.strip():
        raise _option_error("queue", value, task_name, "a non-empty queue name, or None")
    return value


def _check_priority(value: str, task_name: str) -> str:
    if value not in PRIORITY_LEVELS:
        raise _option_error("priority", value, task_name, "one of " + ", ".join(PRIORITY_LEVELS))
    return value


def _check_retry_policy(value: Any, task_name: str) -> Any:
    if value is None or (isinstance(value, str) and value):
        return value
    if callable(getattr(value, "next_delay", None)):
        return value
    raise _option_error(
        "retry_policy", value, task_name, "a policy name or an object with next_delay()"
    )


def _exception_types(option: str, value: object, task_name: str) -> ExceptionTypes:
    rule = "an exception class or a tuple of exception classes"
    if isinstance(value, type):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _option_error(option, value, task_name, rule)
    classes = tuple(value)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ConfigurationError(
                f"invalid option {option} for task {task_name!r}: {cls!r} is not an "
                f"exception class (must be {rule})"
            )
    return tuple(dict.fromkeys(classes))


def _check_retry_filters(
    retry_on: object, dont_retry_on: object, task_name: str
) -> tuple[ExceptionTypes | None, ExceptionTypes]:
    dont = _exception_types("dont_retry_on", dont_retry_on, task_name)
    if retry_on is None:
        return None, dont
    only = _exception_types("retry_on", retry_on, task_name)
    if not only:
        raise ConfigurationError(
            f"invalid option retry_on=() for task {task_name!r}: an empty tuple retries "
            "nothing; use max_retries=0 for that, or retry_on=None to retry every failure"
        )
    both = [cls.__name__ for cls in only if cls in dont]
    if both:
        raise ConfigurationError(
            f"invalid options for task {task_name!r}: {', '.join(both)} is in both "
            "retry_on and dont_retry_on"
        )
    return only, dont
