"""The exporter: job events into prometheus-client metrics, served over HTTP by the worker.

Imported only by the factory, after ``_multiproc.children_directory`` had its chance to
set ``PROMETHEUS_MULTIPROC_DIR``: importing this module imports prometheus-client.

::

    worker event loop ─► PrometheusExporter.job_* ─► counters, histograms, gauges (memory or mmap)
    exporter thread   ─► every metrics_interval: Broker.sizes ─► uno_jobs_queue_depth
                      ─► a child exited: _files.retire_process (its files into the archive)
    HTTP thread       ─► GET /metrics ─► registry, or the multiprocess directory
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.registry import Collector

from uno_jobs.broker import Broker, level_queues
from uno_jobs.errors import ConfigurationError, WorkerStateError
from uno_jobs.events import JobEvents
from uno_jobs.worker import BaseWorker
from uno_jobs_prometheus import _live
from uno_jobs_prometheus._files import CombinedCollector, DirectoryCollector, retire_process
from uno_jobs_prometheus._multiproc import MULTIPROC_ENV
from uno_jobs_prometheus._settings import ExporterSettings

__all__ = ["Metrics", "ProducerMetrics", "PrometheusExporter", "metrics"]

log = logging.getLogger("uno_jobs.prometheus")

# Seconds. Jobs range from milliseconds to the hour a time limit typically allows.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
WAIT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip


class Metrics:
    """The metric families, created once per process in prometheus-client's default registry.

    Labels are bounded: queue names, task names that resolved to a registered task,
    outcomes, dead-letter reasons and priority levels; never a job id. Dead letters carry
    no task label: the task name of a message that cannot run is whatever its producer
    wrote (an unknown task included).
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.enqueued = Counter(
            "uno_jobs_enqueued",
            "Jobs published by producers of this process (or scheduled, when delayed).",
            ["queue", "task", "level"],
            registry=registry,
        )
        self.processed = Counter(
            "uno_jobs_processed",
            "Job executions that ended, by outcome: succeeded, failed (for good), retried "
            "(another attempt follows), worker_lost, skipped (by a middleware), abandoned "
            "(handed back by an immediate shutdown).",
            ["queue", "task", "outcome"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "uno_jobs_dead_lettered",
            "Messages moved to the dead letters without running, by reason.",
            ["queue", "reason"],
            registry=registry,
        )
        self.duration = Histogram(
            "uno_jobs_job_duration_seconds",
            "Execution time of a job's attempt, middleware included.",
            ["queue", "task"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "uno_jobs_queue_wait_seconds",
            "Time from enqueue to the start of execution (jobs whose producer recorded no "
            "enqueue time, such as Celery's, are left out).",
            ["queue", "task"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "uno_jobs_in_progress",
            "Jobs executing now.",
            ["queue", "task"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "uno_jobs_queue_depth",
            "Jobs ready on the broker per priority level, sampled every metrics_interval "
            "seconds (NaN while the broker cannot be asked and once the worker stopped).",
            ["queue", "level"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.worker_up = Gauge(
            "uno_jobs_worker_up",
            "1 while a worker of this process consumes the queue (the number of them).",
            ["queue"],
            registry=registry,
            multiprocess_mode="livesum",
        )


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> Metrics:
    """This process's metric families (created on first use)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics


def writes_files() -> bool:
    """Whether this process's metric values live in a multiprocess directory's files."""
    return values.ValueClass is not values.MutexValue


def exposition(children_directory: str | None) -> Collector:
    """What a worker's endpoint serves.

    This process writes files: the directory (its own files and its children's).
    Otherwise: the default registry, plus the children's directory if there is one.

    Raises:
        ConfigurationError: prometheus-client is in multiprocess mode but
            ``PROMETHEUS_MULTIPROC_DIR`` is no longer set.
    """
    if writes_files():
        directory = os.environ.get(MULTIPROC_ENV) or children_directory
        if not directory:
            raise ConfigurationError(
                f"prometheus exporter: prometheus-client is in multiprocess mode but "
                f"{MULTIPROC_ENV} is no longer set"
            )
        registry = CollectorRegistry()
        registry.register(DirectoryCollector(directory))
        return registry
    if children_directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(CombinedCollector(REGISTRY, children_directory))
    return registry


class _EnqueueCounts:
    """``uno_jobs_enqueued_total`` children, cached per (queue, task, level)."""

    def __init__(self, families: Metrics) -> None:
        self._family = families.enqueued
        self._children: dict[tuple[str, str, str], Counter] = {}

    def inc(self, queue_name: str, task: str, level: str) -> None:
        key = (queue_name, task, level)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._family.labels(*key)
        child.inc()


class ProducerMetrics(JobEvents):
    """The exporter of a ``Queue``: counts the jobs it enqueues.

    It serves nothing itself: the counts are in prometheus-client's default registry, which
    the application exposes as it already does (``prometheus_client.start_http_server``,
    ``make_wsgi_app``), and which a worker's endpoint in the same process serves too.
    """

    def __init__(self) -> None:
        self._enqueued = _EnqueueCounts(metrics())

    def job_enqueued(self, queue: str, task: str, priority: str) -> None:
        self._enqueued.inc(queue, task, priority)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("scrape from %s: " + format, self.address_string(), *args)


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _Server:
    """The metrics endpoint: a threading WSGI server in a daemon thread."""

    def __init__(self, host: str, port: int, registry: Collector, name: str) -> None:
        server_class = _IPv6Server if ":" in host else ThreadingWSGIServer
        try:
            self.httpd = make_server(
                host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigurationError(
                f"prometheus exporter of {name}: cannot listen on {host}:{port}: "
                f"{exc.strerror or exc} "
                "(choose another --prometheus-port / UNO_JOBS_PROMETHEUS_PORT; 0: any free port)"
            ) from exc
        self.thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"uno-prometheus-http-{name}",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(5.0)
        self.httpd.server_close()


_STOP = -1  # the exporter thread's stop signal (no process has this id)


class PrometheusExporter(JobEvents):
    """The Prometheus exporter of one worker (``metrics_exporters=["prometheus"]``).

    Counts and times the worker's jobs from its events, samples the depth of its queue in a
    thread of its own every ``metrics_interval`` seconds, and serves everything on
    ``http://{host}:{port}/metrics`` from :meth:`start` to :meth:`stop`. For a
    ``ProcessPoolWorker``, the scrape includes what task code recorded in the children,
    and the files of children that exited are folded into an archive (see ``_files``).

    Args:
        worker: The worker whose events this exporter receives.
        settings: Where to listen.
        children_directory: The multiprocess directory of the worker's children (``None``:
            the worker has no child processes).
    """

    def __init__(
        self,
        worker: BaseWorker,
        settings: ExporterSettings,
        children_directory: str | None = None,
    ) -> None:
        self.worker = worker
        self.settings = settings
        self.children_directory = children_directory
        self.registry = exposition(children_directory)
        self._m = metrics()
        self._queue = worker.queue_name
        self._levels = level_queues(worker.queue_name, worker.options.priority_levels)
        self._interval = worker.options.metrics_interval
        self._enqueued = _EnqueueCounts(self._m)
        self._started: dict[tuple[str, str], tuple[Histogram, Gauge]] = {}
        self._finished: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._dead: dict[tuple[str, str], Counter] = {}
        self._running: dict[tuple[str, str], int] = {}
        self._up = False
        self._server: _Server | None = None
        self._inbox: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._depth_failing = False

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not serving"
        return f"<PrometheusExporter {self.worker.worker_id} {where}>"

    # -- where it listens -----------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; the system's choice when the port setting was 0.

        Raises:
            WorkerStateError: the exporter is not serving (before ``start``, after ``stop``).
        """
        if self._server is None:
            raise WorkerStateError(
                f"the prometheus exporter of {self.worker.worker_id} is not serving"
            )
        return self._server.address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Serve the metrics and start the exporter's thread (called at worker start).

        Raises:
            ConfigurationError: the host and port cannot be bound; names them.
        """
        if self._server is not None:
            return
        name = self.worker.worker_id
        self._server = _Server(self.settings.host, self.settings.port, self.registry, name)
        self._server.start()
        self._thread = threading.Thread(
            target=self._housekeeping, name=f"uno-prometheus-{name}", daemon=True
        )
        self._thread.start()
        _live.add(self)
        extra = f" (multiprocess directory {self.children_directory})"
        log.info(
            "prometheus metrics of %s on %s%s",
            name,
            self.url,
            extra if self.children_directory else "",
        )

    def stop(self) -> None:
        """Stop serving; the worker is no longer up (called at worker stop)."""
        _live.remove(self)
        self._leave()
        self._stopping = True
        self._inbox.put(_STOP)
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def child_exited(self, pid: int) -> None:
        """A child of some process pool exited: retire its files (in the exporter's thread)."""
        if self.children_directory is not None and not self._stopping:
            self._inbox.put(pid)

    # -- job events (the worker's event loop) ---------------------------------------------

    def worker_started(self, worker: BaseWorker) -> None:
        if not self._up:
            self._up = True
            self._m.worker_up.labels(self._queue).inc()

    def worker_stopped(self, worker: BaseWorker) -> None:
        self._leave()

    def _leave(self) -> None:
        if self._up:
            self._up = False
            self._m.worker_up.labels(self._queue).dec()
        # Jobs abandoned at an immediate shutdown never report an end.
        for (queue_name, task), running in list(self._running.items()):
            if running:
                self._m.in_progress.labels(queue_name, task).dec(running)
        self._running.clear()

    def job_enqueued(self, queue: str, task: str, priority: str) -> None:
        self._enqueued.inc(queue, task, priority)

    def job_started(self, queue: str, task: str, wait_seconds: float | None) -> None:
        key = (queue, task)
        series = self._started.get(key)
        if series is None:
            series = self._started[key] = (
                self._m.queue_wait.labels(queue, task),
                self._m.in_progress.labels(queue, task),
            )
        if wait_seconds is not None:
            series[0].observe(max(0.0, wait_seconds))  # clocks of producers may run ahead
        series[1].inc()
        self._running[key] = self._running.get(key, 0) + 1

    def job_finished(self, queue: str, task: str, outcome: str, duration_seconds: float) -> None:
        series = self._finished.get((queue, task, outcome))
        if series is None:
            series = self._finished[(queue, task, outcome)] = (
                self._m.processed.labels(queue, task, outcome),
                self._m.duration.labels(queue, task),
            )
        series[0].inc()
        series[1].observe(duration_seconds)
        key = (queue, task)
        running = self._running.get(key, 0)
        if running:
            self._running[key] = running - 1
            self._started[key][1].dec()

    def job_dead_lettered(self, queue: str, task: str, reason: str) -> None:
        child = self._dead.get((queue, reason))
        if child is None:
            child = self._dead[(queue, reason)] = self._m.dead_lettered.labels(queue, reason)
        child.inc()

    # -- the exporter's thread ------------------------------------------------------------

    def _housekeeping(self) -> None:
        broker = Broker(self.worker.broker_url)
        next_sample = time.monotonic()
        try:
            while True:
                try:
                    pid = self._inbox.get(timeout=max(0.0, next_sample - time.monotonic()))
                except queue.Empty:
                    self._sample_depth(broker)
                    next_sample = time.monotonic() + self._interval
                    continue
                if pid == _STOP:
                    break
                self._retire(pid)
        finally:
            broker.close()
            self._unknown_depth()

    def _retire(self, pid: int) -> None:
        assert self.children_directory is not None
        try:
            retire_process(self.children_directory, pid)
        except Exception:
            log.exception("prometheus exporter: cannot retire the metrics files of pid %d", pid)

    def _sample_depth(self, broker: Broker) -> None:
        names = [name for name, _ in self._levels]
        try:
            sizes = broker.sizes(names)
        except Exception as exc:
            if not self._depth_failing:
                log.warning(
                    "prometheus exporter of %s: cannot sample the depth of %s: %s: %s "
                    "(uno_jobs_queue_depth is NaN until it works again)",
                    self.worker.worker_id,
                    self._queue,
                    type(exc).__name__,
                    exc,
                )
            self._depth_failing = True
            self._unknown_depth()
            return
        if self._depth_failing:
            log.info("prometheus exporter of %s: queue depth sampled again", self.worker.worker_id)
            self._depth_failing = False
        if self._stopping:
            return
        for name, level in self._levels:
            self._m.queue_depth.labels(self._queue, level).set(sizes.get(name, 0))

    def _unknown_depth(self) -> None:
        for _, level in self._levels:
            # NaN, not a removed series: removal does not reach multiprocess files.
            self._m.queue_depth.labels(self._queue, level).set(math.nan)
