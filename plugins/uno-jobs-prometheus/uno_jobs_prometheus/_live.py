"""The exporters of this process that are running, by owner (a worker)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uno_jobs_prometheus._exporter import PrometheusExporter

__all__ = ["add", "exporter_for", "remove", "running"]

_running: dict[int, PrometheusExporter] = {}
_lock = threading.Lock()


def add(exporter: PrometheusExporter) -> None:
    with _lock:
        _running[id(exporter.worker)] = exporter


def remove(exporter: PrometheusExporter) -> None:
    with _lock:
        if _running.get(id(exporter.worker)) is exporter:
            del _running[id(exporter.worker)]


def running() -> list[PrometheusExporter]:
    with _lock:
        return list(_running.values())


def exporter_for(worker: object) -> PrometheusExporter | None:
    """The running Prometheus exporter of ``worker`` (``None``: it has none, or it stopped)."""
    with _lock:
        exporter = _running.get(id(worker))
    return exporter if exporter is not None and exporter.worker is worker else None
