"""Worker types by name (``uno-jobs worker --type NAME``), through the plugin manager.

The built-in types are contributed by ``uno_jobs.plugins._builtins`` through the same hook
as third-party ones, so both resolve the same way.
"""

from __future__ import annotations

from uno_jobs.plugins import get_plugins
from uno_jobs.worker._base import BaseWorker

__all__ = ["get_worker_type", "worker_types"]


def worker_types() -> dict[str, type[BaseWorker]]:
    return dict(get_plugins().worker_types())


def get_worker_type(name: str) -> type[BaseWorker]:
    """The worker type called ``name``.

    Raises:
        ConfigurationError: no such type; the message lists the known ones.
    """
    cls: type[BaseWorker] = get_plugins().lookup("worker types", name)
    return cls
