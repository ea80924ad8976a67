"""The hook specifications of uno_jobs. Every hook name starts with ``uno_jobs_``.

Contribution hooks are called once, at start-up, and return mappings from a name to a
class or factory; the per-job path then calls those plain objects, never pluggy. Boot
hooks run when a worker starts or stops and when a process-pool child starts.

A plugin is a module or object with functions marked ``@uno_jobs.hookimpl``, declared as
an entry point in the group ``uno_jobs``::

    [project.entry-points.uno_jobs]
    my_plugin = "my_package.uno_plugin"
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from uno_jobs.middleware import Middleware
    from uno_jobs.retry import RetryPolicy
    from uno_jobs.store import JobStore
    from uno_jobs.worker import BaseWorker

PROJECT = "uno_jobs"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def uno_jobs_worker_types() -> Mapping[str, type[BaseWorker]]:  # type: ignore[empty-body]
    """Worker types by name, as ``uno-jobs worker --type NAME`` selects them."""


@hookspec
def uno_jobs_middleware() -> Mapping[str, Callable[[], Middleware]]:  # type: ignore[empty-body]
    """Middleware factories by name, as ``middleware=["name"]`` or ``--middleware`` select them."""


@hookspec
def uno_jobs_retry_policies() -> Mapping[str, Callable[..., RetryPolicy]]:  # type: ignore[empty-body]
    """Retry policy factories by name, as ``@task(retry_policy="name")`` selects them."""


@hookspec
def uno_jobs_job_stores() -> Mapping[str, Callable[..., JobStore]]:  # type: ignore[empty-body]
    """Job store factories by URL scheme, called as ``factory(url, **options)``."""


@hookspec
def uno_jobs_metrics_exporters() -> Mapping[str, Callable[..., Any]]:  # type: ignore[empty-body]
    """Metrics exporter factories by name, as ``metrics_exporters=["name"]`` selects them.

    A worker (or a ``Queue``) named as ``owner`` calls ``factory(owner)`` once, before it
    connects or starts child processes, and gets a ``uno_jobs.events.JobEvents`` listener;
    the listener's ``start()`` and ``stop()``, when it has them, run with the owner's.
    """


@hookspec
def uno_jobs_add_cli_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add sub-commands to ``uno-jobs``; set ``func`` with ``parser.set_defaults``."""


@hookspec
def uno_jobs_add_worker_options(parser: argparse.ArgumentParser) -> None:
    """Add settings to ``uno-jobs worker`` (as ``pytest_addoption`` does for pytest).

    Their parsed values reach the worker as ``worker.settings``, readable in
    ``uno_jobs_worker_boot``.
    """


@hookspec
def uno_jobs_worker_boot(worker: BaseWorker) -> None:
    """A worker is starting (options validated, not yet consuming)."""


@hookspec
def uno_jobs_worker_stopped(worker: BaseWorker) -> None:
    """A worker has stopped."""


@hookspec
def uno_jobs_child_boot() -> None:
    """A process-pool child process started (set up tracing or metrics there)."""


@hookspec
def uno_jobs_child_exited(pid: int) -> None:
    """A process-pool child process exited and was reaped (called in the worker process).

    For clean-up of what a child leaves behind, such as its metrics files. Runs on the
    worker's event loop: hand slow work to a thread of your own.
    """
