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

The package is three modules, each readable alone: ``_task.py`` the :class:`Task` object
and the checks of its options; ``_registry.py`` :class:`TaskRegistry`, the default
registry and ``@task``; ``_resolver.py`` :class:`TaskResolver` and the module allowlist.
Import from here: this namespace is the public one.
"""

from __future__ import annotations

from uno_jobs.message import PRIORITY_LEVELS
from uno_jobs.tasks._registry import TaskRegistry, default_registry, get_default_registry, task
from uno_jobs.tasks._resolver import TaskResolver, check_allowed_prefix
from uno_jobs.tasks._task import MAX_TASK_NAME_LENGTH, Task
from uno_jobs.tasks._task import ExceptionTypes as ExceptionTypes  # importable, as before

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
