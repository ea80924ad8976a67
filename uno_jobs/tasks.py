"""Tasks: the ``@task`` decorator, the registry of tasks, and safe resolution of task names.

A *task* is a function plus its options (retries, delay, which exceptions are retried,
time limit, default queue, priority). ``@task`` wraps the function in a :class:`Task` and
records it in a :class:`TaskRegistry`; it connects to nothing and reads no environment
(STYLE.md §4).

A worker turns the task name carried by a message into a :class:`Task` with a
:class:`TaskResolver`. A registered name is a dictionary lookup. A dotted module path
(``my_app.tasks.reports.generate_report``) is imported only when its module is under a
prefix the worker was configured to allow, and only a :class:`Task` is ever returned, so a
message naming ``os.system`` or ``builtins.eval`` is refused before anything is imported.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import keyword
import math
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar, overload

from uno_jobs.errors import (
    ConfigurationError,
    DuplicateTaskError,
    ForbiddenTaskError,
    TaskError,
    UnknownTaskError,
)
from uno_jobs.message import PRIORITY_LEVELS

__all__ = [
    "MAX_TASK_NAME_LENGTH",
    "PRIORITY_LEVELS",
    "Task",
    "TaskRegistry",
    "TaskResolver",
    "check_allowed_prefix",
    "default_registry",
    "get_default_registry",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")

#: What ``retry_on`` / ``dont_retry_on`` hold once validated.
ExceptionTypes = tuple[type[BaseException], ...]

"""The priority levels, highest first."""

MAX_TASK_NAME_LENGTH = 256
"""Longer task names are refused, both at registration and at resolution."""

_MISSING = object()


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


def _part_problem(part: str) -> str | None:
    """Why one dotted part cannot name a module or task attribute, or None if it can."""
    if not part:
        return "the dotted path has an empty part (a leading, trailing or double dot)"
    if part.startswith("__"):
        return f"names starting with '__' are not allowed ({part!r})"
    # ASCII only: a module path never needs more, and it rules out look-alike characters.
    if not (part.isascii() and part.isidentifier()):
        return f"{part!r} is not a valid Python identifier"
    if keyword.iskeyword(part):
        return f"{part!r} is a Python keyword"
    return None


def check_allowed_prefix(prefix: str) -> str:
    """Validate a configured module prefix (a dotted identifier such as ``my_app.tasks``).

    Returns:
        The prefix, stripped of surrounding whitespace.

    Raises:
        ConfigurationError: The prefix is not a dotted module name.
    """
    if not isinstance(prefix, str):
        raise ConfigurationError(f"allowed module prefix {prefix!r} must be a string")
    stripped = prefix.strip()
    if len(stripped) > MAX_TASK_NAME_LENGTH:
        raise ConfigurationError(
            f"allowed module prefix is {len(stripped)} characters (limit {MAX_TASK_NAME_LENGTH})"
        )
    for part in stripped.split("."):
        problem = _part_problem(part)
        if problem is not None:
            raise ConfigurationError(
                f"allowed module prefix {prefix!r} is not a dotted module name: {problem}"
            )
    return stripped


def _describe(value: object) -> str:
    if isinstance(value, types.ModuleType):
        return "a module"
    if isinstance(value, type):
        return "a class"
    if inspect.isroutine(value):
        return "a plain function; decorate it with @task"
    return f"an object of type {type(value).__name__}"


class TaskResolver:
    """Turns the task name of a message into a :class:`Task`, safely.

    1. A name in the registry resolves to that task (a dictionary lookup).
    2. A dotted path ``pkg.mod.attr`` whose every part is a plain identifier, and whose
       module ``pkg.mod`` equals or lies under an allowed prefix by whole parts, is
       imported; it resolves when ``attr`` is a :class:`Task`, or when the import
       registered a task named ``attr`` (or the whole path) from that module.
    3. Anything else is refused, and nothing is imported unless step 2's checks pass.

    Resolved paths are cached. Thread-safe: imports happen under a lock.
    """

    def __init__(
        self, registry: TaskRegistry | None = None, allowed_modules: Iterable[str] = ()
    ) -> None:
        """Create a resolver.

        Args:
            registry: The registry of named tasks; default :data:`default_registry`.
            allowed_modules: Module prefixes that dotted paths may be imported from.

        Raises:
            ConfigurationError: A prefix is not a dotted module name.
        """
        if isinstance(allowed_modules, str):
            raise ConfigurationError(
                f"allowed_modules must be a list of module prefixes, not the string "
                f"{allowed_modules!r}"
            )
        self._registry = registry if registry is not None else default_registry
        prefixes = (check_allowed_prefix(prefix) for prefix in allowed_modules)
        self._allowed: tuple[str, ...] = tuple(dict.fromkeys(prefixes))
        self._cache: dict[str, Task[..., Any]] = {}
        # Reentrant: importing a module may itself resolve a task on this thread.
        self._lock = threading.RLock()

    @property
    def registry(self) -> TaskRegistry:
        """The registry consulted first."""
        return self._registry

    @property
    def allowed_modules(self) -> tuple[str, ...]:
        """The module prefixes dotted paths may be imported from."""
        return self._allowed

    def resolve(self, name: str) -> Task[..., Any]:
        """The task a message's task name stands for.

        Raises:
            UnknownTaskError: Not registered and not an importable task path (including an
                allowed module that fails to import).
            ForbiddenTaskError: Outside the allowed prefixes, not a task, an invalid
                identifier, or a name longer than :data:`MAX_TASK_NAME_LENGTH`.
        """
        if not isinstance(name, str):
            raise ForbiddenTaskError(repr(name)[:80], "a task name must be a string")
        if len(name) > MAX_TASK_NAME_LENGTH:
            raise ForbiddenTaskError(
                name[:64] + "...",
                f"the name is {len(name)} characters long (limit {MAX_TASK_NAME_LENGTH})",
            )
        found = self._registry.get(name)
        if found is None:
            found = self._cache.get(name)
        if found is not None:
            return found
        if "." not in name:
            raise UnknownTaskError(name)
        module_name, attr = self._check_path(name)
        with self._lock:
            found = self._cache.get(name)
            if found is None:
                try:
                    found = self._load(name, module_name, attr)
                except TaskError:
                    raise
                except Exception as exc:
                    raise UnknownTaskError(
                        name, f"unknown task {name!r}: {type(exc).__name__}: {exc}"
                    ) from exc
                self._cache[name] = found
        return found

    def _check_path(self, name: str) -> tuple[str, str]:
        """Split a dotted path into module and attribute, refusing it before any import."""
        parts = name.split(".")
        for part in parts:
            problem = _part_problem(part)
            if problem is not None:
                raise ForbiddenTaskError(name, problem)
        module_name, attr = ".".join(parts[:-1]), parts[-1]
        if not any(
            module_name == prefix or module_name.startswith(prefix + ".")
            for prefix in self._allowed
        ):
            allowed = ", ".join(self._allowed) if self._allowed else "none configured"
            raise ForbiddenTaskError(
                name, f"module {module_name!r} is not under an allowed prefix (allowed: {allowed})"
            )
        return module_name, attr

    def _load(self, name: str, module_name: str, attr: str) -> Task[..., Any]:
        """Import an allowed module and find the task ``attr`` in it."""
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownTaskError(
                name, f"unknown task {name!r}: cannot import module {module_name!r}: {exc}"
            ) from exc
        except Exception as exc:
            raise UnknownTaskError(
                name,
                f"unknown task {name!r}: importing module {module_name!r} raised "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        registered = self._registry.get(name)
        if registered is not None:
            return registered
        target = getattr(module, attr, _MISSING)
        if target is _MISSING:
            # @task(name="short") on a function of another name: the attribute is missing,
            # but the import registered the task under its short name.
            alias = self._registry.get(attr)
            if alias is not None and getattr(alias.func, "__module__", None) == module_name:
                return alias
            raise UnknownTaskError(
                name, f"unknown task {name!r}: module {module_name!r} has no task {attr!r}"
            )
        if not isinstance(target, Task):
            raise ForbiddenTaskError(name, f"{name!r} is not a task (it is {_describe(target)})")
        return target
