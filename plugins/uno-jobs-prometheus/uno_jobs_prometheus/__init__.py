"""Prometheus metrics for uno_jobs, as a plugin: the ``prometheus`` metrics exporter.

A worker created with ``metrics_exporters=["prometheus"]`` (``uno-jobs worker
--metrics-exporter prometheus``) calls :func:`create_exporter` with itself at start and
gets a :class:`PrometheusExporter`, which serves ``/metrics`` on 127.0.0.1:9464 unless
``--prometheus-host`` / ``--prometheus-port`` or ``UNO_JOBS_PROMETHEUS_HOST`` /
``UNO_JOBS_PROMETHEUS_PORT`` say otherwise. A ``Queue`` gets a :class:`ProducerMetrics`,
which counts what it enqueues in prometheus-client's default registry.

Importing this package does not import prometheus-client: the factory decides first
whether a ``ProcessPoolWorker``'s process must write multiprocess files (see
``_multiproc``), since prometheus-client fixes that at its import.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from uno_jobs import hookimpl
from uno_jobs.errors import ConfigurationError
from uno_jobs.events import JobEvents
from uno_jobs.queue import Queue
from uno_jobs.worker import BaseWorker
from uno_jobs_prometheus import _live
from uno_jobs_prometheus._multiproc import MULTIPROC_ENV, children_directory
from uno_jobs_prometheus._settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENV_HOST,
    ENV_PORT,
    ExporterSettings,
    port_argument,
)

if TYPE_CHECKING:
    from uno_jobs_prometheus._exporter import ProducerMetrics, PrometheusExporter

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_HOST",
    "ENV_PORT",
    "MULTIPROC_ENV",
    "ExporterSettings",
    "ProducerMetrics",
    "PrometheusExporter",
    "create_exporter",
    "exporter_for",
]

exporter_for = _live.exporter_for


def create_exporter(owner: BaseWorker | Queue) -> JobEvents:
    """The exporter of ``owner``: a worker's :class:`PrometheusExporter` (started and
    stopped with it) or a ``Queue``'s :class:`ProducerMetrics`.

    For a worker, the settings are read from ``owner.settings`` (the command line), then
    the environment. For a ``ProcessPoolWorker``, ``PROMETHEUS_MULTIPROC_DIR`` is set (to a
    private temporary directory if unset) before prometheus-client is imported here; call
    this before the worker spawns its children.

    Raises:
        ConfigurationError: a setting is invalid, or ``owner`` is neither a worker nor a
            queue.
    """
    if isinstance(owner, BaseWorker):
        settings = ExporterSettings.resolve(owner.settings)
        directory = children_directory(owner)
        from uno_jobs_prometheus._exporter import PrometheusExporter

        return PrometheusExporter(owner, settings, directory)
    if isinstance(owner, Queue):
        from uno_jobs_prometheus._exporter import ProducerMetrics

        return ProducerMetrics()
    raise ConfigurationError(
        f"prometheus exporter: exports the metrics of a worker or a Queue, not of "
        f"{type(owner).__name__}"
    )


def __getattr__(name: str) -> Any:
    # The classes live in a module that imports prometheus-client: loaded on first use
    # only, so that importing the plugin leaves the multiprocess decision to the factory.
    if name in ("PrometheusExporter", "ProducerMetrics"):
        from uno_jobs_prometheus import _exporter

        return getattr(_exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def uno_jobs_metrics_exporters() -> Mapping[str, Callable[..., Any]]:
    return {"prometheus": create_exporter}


@hookimpl
def uno_jobs_add_worker_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prometheus plugin (with --metrics-exporter prometheus)")
    group.add_argument(
        "--prometheus-port",
        type=port_argument,
        default=None,
        metavar="PORT",
        help=f"serve /metrics on this port (default: ${ENV_PORT} or {DEFAULT_PORT}; "
        "0: any free port, logged)",
    )
    group.add_argument(
        "--prometheus-host",
        default=None,
        metavar="HOST",
        help=f"the address to bind (default: ${ENV_HOST} or {DEFAULT_HOST})",
    )


@hookimpl
def uno_jobs_child_exited(pid: int) -> None:
    for exporter in _live.running():
        exporter.child_exited(pid)
