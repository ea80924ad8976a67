"""Tasks for the Prometheus exporter tests (in-process, process-pool children, ``--app``).

``prom.work`` records metrics of its own where it runs, as user task code does; in a
process-pool child they go to the multiprocess directory. prometheus-client is imported
when a task first records, not at import of this module, so that a worker started with
``--app prometheus_tasks`` imports it only after the exporter chose its mode.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from uno_jobs import task

_metrics: dict[str, Any] = {}
_lock = threading.Lock()


def task_metrics() -> dict[str, Any]:
    """The task's own metric families (created once per process, on first use)."""
    with _lock:
        if not _metrics:
            from prometheus_client import Counter, Gauge, Histogram

            _metrics["jobs"] = Counter("uno_test_task_jobs", "Jobs of prom.work.", ["label"])
            _metrics["seconds"] = Histogram(
                "uno_test_task_seconds", "Made-up work time.", ["label"], buckets=(0.1, 1.0)
            )
            _metrics["live"] = Gauge(
                "uno_test_task_live", "Children that ran prom.work.", ["label"],
                multiprocess_mode="livesum",
            )  # fmt: skip
        return _metrics


@task(name="prom.work")
def work(label: str) -> int:
    metrics = task_metrics()
    metrics["jobs"].labels(label).inc()
    metrics["seconds"].labels(label).observe(0.5)
    metrics["live"].labels(label).set(1)
    return os.getpid()


@task(name="prom.add")
def add(a: int, b: int) -> int:
    return a + b


@task(name="prom.fail")
def fail() -> None:
    raise ValueError("it broke")


@task(name="prom.flaky", max_retries=1, retry_delay=0)
def flaky(folder: str) -> str:
    """Fails its first attempt (leaves a marker), succeeds the next."""
    marker = Path(folder) / "flaky.tried"
    if not marker.exists():
        marker.write_text("1")
        raise RuntimeError("first attempt fails")
    return "ok"
