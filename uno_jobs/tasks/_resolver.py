"""Safe resolution of a message's task name: :class:`TaskResolver` and the module allowlist.

A worker turns the task name carried by a message into a :class:`Task` with a
:class:`TaskResolver`. A registered name is a dictionary lookup. A dotted module path
(``my_app.tasks.reports.generate_report``) is imported only when its module is under a
prefix the worker was configured to allow, and only a :class:`Task` is ever returned, so a
message naming ``os.system`` or ``builtins.eval`` is refused before anything is imported.
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import threading
import types
from collections.abc import Iterable
from typing import Any

from uno_jobs.errors import (
    ConfigurationError,
    ForbiddenTaskError,
    TaskError,
    UnknownTaskError,
)
from uno_jobs.tasks._registry import TaskRegistry, default_registry
from uno_jobs.tasks._task import MAX_TASK_NAME_LENGTH, Task

__all__ = ["TaskResolver", "check_allowed_prefix"]

_MISSING = object()


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
