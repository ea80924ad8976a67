"""The named registry of worker types (``uno-jobs worker --type NAME``).

The built-ins are registered here; the plugin manager adds third-party types through the
same ``register_worker_type`` call, so both resolve the same way.
"""

from __future__ import annotations

import threading

from uno_jobs.errors import ConfigurationError
from uno_jobs.worker._base import BaseWorker
from uno_jobs.worker._types import AsyncWorker, SyncWorker, ThreadPoolWorker

__all__ = ["get_worker_type", "register_worker_type", "worker_types"]

_lock = threading.Lock()
_types: dict[str, type[BaseWorker]] = {
    "sync": SyncWorker,
    "thread": ThreadPoolWorker,
    "async": AsyncWorker,
}


def register_worker_type(name: str, cls: type[BaseWorker]) -> None:
    """Add a worker type; a name taken by a different class is an error naming both."""
    with _lock:
        existing = _types.get(name)
        if existing is not None and existing is not cls:
            raise ConfigurationError(
                f"worker type {name!r} is already {existing.__module__}.{existing.__qualname__}; "
                f"cannot register {cls.__module__}.{cls.__qualname__}"
            )
        _types[name] = cls


def worker_types() -> dict[str, type[BaseWorker]]:
    with _lock:
        return dict(_types)


def get_worker_type(name: str) -> type[BaseWorker]:
    with _lock:
        cls = _types.get(name)
        if cls is None:
            raise ConfigurationError(
                f"unknown worker type {name!r} (known: {', '.join(sorted(_types))})"
            )
        return cls
