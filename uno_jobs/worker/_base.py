"""The worker lifecycle and job loop shared by every worker type.

::

    consumer thread ─► inbox ─► (event loop) level-ordered buffer ─► slot free? ─► _run_job
      _run_job: decode ─► resolve task ─► before_execution ─► executor ─► after / on_error
                ─► recorder thread: store.apply(batch) ─► consumer thread: ack

States: initialized → starting → running ⇄ paused → shutting_down → stopped.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

from uno_jobs.broker import (
    Broker,
    ConsumerThread,
    Delivery,
    level_queues,
)
from uno_jobs.config import resolve_allowed_modules, resolve_broker_url, resolve_store_url
from uno_jobs.dead_letters import CANCELLED_DETAIL
from uno_jobs.errors import (
    ForbiddenTaskError,
    MessageError,
    SkipJob,
    UnknownTaskError,
    WorkerStateError,
)
from uno_jobs.logs import job_context
from uno_jobs.message import (
    PRIORITY_LEVELS,
    Message,
    decode,
    timestamp_from_iso,
)
from uno_jobs.metrics import WorkerStats
from uno_jobs.middleware import MiddlewareChain, job_fields, job_view
from uno_jobs.plugins import get_plugins
from uno_jobs.schedule import BROKER_DELAY_HEADER, BROKER_DELAY_TOLERANCE_SECONDS, DueJobMover
from uno_jobs.store import JobStatus, JobStore, JobUpdate, open_store
from uno_jobs.tasks import Task, TaskResolver, get_default_registry
from uno_jobs.tracing import consumer_span, fail_span, messaging_system, tracing_enabled
from uno_jobs.worker._cancels import CancelWatch
from uno_jobs.worker._deadletter import DeadLetterer
from uno_jobs.worker._executors import Executor, JobTimeLimitExceeded, WorkerLostError
from uno_jobs.worker._observe import Observer
from uno_jobs.worker._options import WorkerOptions, build_options
from uno_jobs.worker._outcomes import Outcomes, RetryDecider
from uno_jobs.worker._recorder import Entry, Recorder

if TYPE_CHECKING:
    from uno_jobs.celery_results import CeleryResults

__all__ = ["BaseWorker", "WorkerState"]

log = logging.getLogger("uno_jobs.worker")

_LEVEL_RANK = {level: rank for rank, level in enumerate(PRIORITY_LEVELS)}
_ids = itertools.count(1)


class WorkerState:
    INITIALIZED = "initialized"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting_down"
    STOPPED = "stopped"


class _Run:
    """One job being executed."""

    __slots__ = ("delivery", "discarded", "task")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.discarded = False
        self.task: asyncio.Task[None] | None = None


class BaseWorker:
    """The shared base of every worker type. Subclasses pick options and an executor."""

    options_model: ClassVar[type[WorkerOptions]] = WorkerOptions

    def __init__(self, **options: Any) -> None:
        self.options: WorkerOptions = build_options(
            self.options_model, type(self).__name__, options
        )
        opts = self.options
        self.worker_id = opts.worker_id or f"{socket.gethostname()}-{os.getpid()}-{next(_ids)}"
        self.queue_name = opts.queue_name
        self.concurrency = opts.concurrency
        self.broker_url = resolve_broker_url(opts.broker_url)
        self.store_url = resolve_store_url(opts.store_url, self.broker_url)
        self._levels = level_queues(self.queue_name, opts.priority_levels)
        plugins = get_plugins()
        self._middleware = MiddlewareChain(
            [
                plugins.lookup("middleware", m)() if isinstance(m, str) else m
                for m in opts.middleware
            ]
        )
        self._retries = RetryDecider(opts.retry_policy)
        self._resolver = TaskResolver(
            opts.registry if opts.registry is not None else get_default_registry(),
            resolve_allowed_modules(opts.allowed_modules),
        )
        self.state = WorkerState.INITIALIZED
        #: Settings from the command line, plugins' ones included (``uno-jobs worker``).
        self.settings: dict[str, Any] = {}
        self.stats = WorkerStats()
        self.exit_code = 0
        self._broker: Broker | None = None
        self._store: JobStore | None = None
        self._consumer: ConsumerThread | None = None
        self._recorder: Recorder | None = None
        self._celery_results: CeleryResults | None = None
        self._executor: Executor | None = None
        self._mover: DueJobMover | None = None
        self._dead: DeadLetterer | None = None
        self._cancels = CancelWatch()
        # Whether an OpenTelemetry SDK is installed, looked up once per batch of
        # deliveries (``_drain_inbox``): without one, the API's lookup reads os.environ.
        self._traced = False
        self._observer = Observer(self)
        self._events = self._observer.events
        self._system = "?"  # messaging.system of the broker, once connected
        self._outcomes: Outcomes | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[Delivery] = deque()
        self._inbox_scheduled = False
        # Set when the worker decides to stop from a callback (a signal, max_failures):
        # from then on no job starts, though the shutdown task it spawns has not run yet.
        self._stopping = False
        self._buffer: list[tuple[int, int, Delivery]] = []
        self._seq = itertools.count()
        self._running: dict[int, _Run] = {}
        self._idle: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._signals = 0
        self._background: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.worker_id} queue={self.queue_name} {self.state}>"

    def make_executor(self) -> Executor:
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start consuming; returns once the worker is consuming.

        Raises:
            WorkerStateError: the worker was started before.
            BrokerUnavailableError: the broker cannot be reached.
        """
        if self.state != WorkerState.INITIALIZED:
            raise WorkerStateError(f"worker {self.worker_id} is {self.state}; start() runs once")
        self.state = WorkerState.STARTING
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = asyncio.Event()
        try:
            self._observer.prepare()
            await asyncio.to_thread(self._open)
        except BaseException:
            self.state = WorkerState.STOPPED
            self._stopped.set()
            await asyncio.to_thread(self._close_resources)
            await asyncio.to_thread(self._observer.stop)
            raise
        self.stats.restart()
        raise_gc_threshold(self.options.gc_threshold)
        if self.options.gc_freeze:
            freeze_gc_once()
        get_plugins().worker_boot(self)
        self.state = WorkerState.RUNNING
        try:
            self._observer.start()
        except BaseException:
            await self.shutdown(wait=False)
            raise
        self._fill_slots()
        log.info(
            "worker %s consuming %s on %s (concurrency %d)",
            self.worker_id,
            ", ".join(name for name, _ in self._levels),
            self._broker.spec.display if self._broker else "?",
            self.concurrency,
        )

    def _open(self) -> None:
        opts = self.options
        self._broker = Broker(self.broker_url)
        self._store = open_store(self.store_url)
        if opts.celery_results_url is not None:
            # Imported here: it needs redis-py, which costs ~18 MB to import.
            from uno_jobs.celery_results import CeleryResults

            self._celery_results = CeleryResults(opts.celery_results_url)
        self._recorder = Recorder(self._store, self.worker_id, self._celery_results)
        self._recorder.start()
        self._executor = self.make_executor()
        window = self.concurrency + (opts.batch_size if opts.prefetch else 0)
        # A Redis store on the broker's database: each fetch reads the cancellations'
        # version, and a delivery whose reading is the version held starts without a read.
        version_key = getattr(self._store, "cancel_version_key", None)
        self._consumer = consumer = self._broker.consumer(
            self._levels,
            window,
            self._on_delivery,
            self.worker_id,
            opts.heartbeat_interval,
            cancel_version_key=version_key(self._broker.spec.url) if version_key else None,
        )
        self.stats.count_invalid_envelopes(lambda: consumer.invalid_envelopes)
        self._warn_about_consumer_timeout()
        self._system = messaging_system(self._broker.spec.kind)
        self._dead = DeadLetterer(self._consumer, self._recorder, self.worker_id, self._events)
        self._outcomes = Outcomes(
            self._recorder, self._consumer, self._dead, self.stats, self.queue_name, self.worker_id
        )
        self._consumer.start_and_wait()
        self._mover = DueJobMover(self._store, self._broker, opts.poll_interval, self.worker_id)
        self._mover.start()

    def _warn_about_consumer_timeout(self) -> None:
        """RabbitMQ closes a channel whose delivery stays unacked past ``consumer_timeout``."""
        if self._broker is None or self._broker.spec.kind != "amqp":
            return
        limit = self.options.max_job_duration
        broker_limit = self._broker.spec.consumer_timeout
        if limit is not None and limit > broker_limit:
            log.warning(
                "max_job_duration=%s exceeds RabbitMQ's consumer_timeout of %g s: a job "
                "running longer makes the broker close the channel and deliver it again. "
                "Raise consumer_timeout in rabbitmq.conf (see the README) and tell uno_jobs "
                "with ?consumer_timeout=SECONDS on the broker URL.",
                f"{limit:g} s",
                broker_limit,
            )

    async def wait_stopped(self) -> None:
        """Block until the worker has stopped (after ``shutdown`` or a signal)."""
        if self._stopped is None:
            raise WorkerStateError(f"worker {self.worker_id} was never started")
        await self._stopped.wait()

    async def run(self) -> int:
        """Start, stop on SIGINT/SIGTERM (a second one forces), wait; returns the exit code."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.wait_stopped()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return self.exit_code

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a lifecycle call in the background, keeping a reference until it ends."""
        background = asyncio.ensure_future(coro)
        self._background.add(background)
        background.add_done_callback(self._background.discard)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        name = signal.Signals(sig).name
        if self._signals == 1:
            log.info("%s: graceful shutdown of %s (again to force)", name, self.worker_id)
            self._stop_soon(wait=True)
        else:
            log.warning("%s again: immediate shutdown of %s", name, self.worker_id)
            self.exit_code = 1
            self._stop_soon(wait=False)

    def _stop_soon(self, wait: bool) -> None:
        """Shut down from a callback: no job starts from now on, and ``shutdown`` runs next.

        ``shutdown`` is a coroutine, so a callback can only spawn it; a delivery that reaches
        the loop before it runs is handed back, not started.
        """
        self._stopping = True
        self._spawn(self.shutdown(wait=wait))

    async def pause(self) -> None:
        """Stop starting new jobs; running ones finish. Prefetched jobs are handed back."""
        if self.state == WorkerState.RUNNING:
            self.state = WorkerState.PAUSED
            assert self._consumer is not None
            self._consumer.set_consuming(False)
            self._hand_back_buffer()

    async def resume(self) -> None:
        """Start taking jobs again after ``pause``."""
        if self.state == WorkerState.PAUSED:
            self.state = WorkerState.RUNNING
            assert self._consumer is not None
            self._consumer.set_consuming(True)

    async def shutdown(self, wait: bool = True) -> None:
        """Stop the worker.

        Args:
            wait: ``True`` (graceful): running jobs get ``shutdown_timeout`` seconds to
                finish; jobs not started are handed back at once. ``False``: stop now and
                hand every job back to the broker; results that arrive later are dropped.
        """
        if self.state in (WorkerState.INITIALIZED, WorkerState.STOPPED):
            self.state = WorkerState.STOPPED
            if self._stopped is not None:
                self._stopped.set()
            return
        if self.state == WorkerState.SHUTTING_DOWN:
            if not wait:
                self._abandon_running()
            assert self._stopped is not None
            await self._stopped.wait()
            return
        self.state = WorkerState.SHUTTING_DOWN
        assert self._consumer is not None and self._idle is not None
        self._consumer.set_consuming(False)
        self._hand_back_buffer()
        if wait and self._running:
            try:
                await asyncio.wait_for(self._idle.wait(), self.options.shutdown_timeout)
            except asyncio.TimeoutError:
                log.warning(
                    "%d job(s) still running after shutdown_timeout=%gs; handing them back",
                    len(self._running),
                    self.options.shutdown_timeout,
                )
                self.exit_code = self.exit_code or 1
        self._abandon_running()
        await asyncio.to_thread(self._close_resources)
        await asyncio.to_thread(self._observer.stop)
        self.state = WorkerState.STOPPED
        assert self._stopped is not None
        self._stopped.set()
        log.info("worker %s stopped", self.worker_id)
        get_plugins().worker_stopped(self)

    def _abandon_running(self) -> None:
        """Drop running jobs: their messages go back to the broker when it closes."""
        for run in list(self._running.values()):
            run.discarded = True
            if run.task is not None:
                run.task.cancel()
        if self._running and self._recorder is not None:
            self._recorder.put(Entry([self._requeued_update(r) for r in self._running.values()]))
        self._running.clear()

    def _requeued_update(self, run: _Run) -> JobUpdate:
        headers = run.delivery.headers
        return JobUpdate(
            str(headers.get("id", "")),
            str(headers.get("task", "")),
            self.queue_name,
            {"status": JobStatus.QUEUED, "worker_id": None},
        )

    def _close_resources(self) -> None:
        if self._mover is not None:
            self._mover.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self._recorder is not None:
            self._recorder.flush(timeout=10.0)
        if self._consumer is not None and self._consumer.is_alive():
            self._consumer.stop()
        if self._recorder is not None:
            self._recorder.stop()
        if self._broker is not None:
            self._broker.close()
        if self._store is not None:
            self._store.close()
        if self._celery_results is not None:
            self._celery_results.close()
            self._celery_results = None

    # -- health and metrics -------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Messages this worker holds: running, prefetched, or awaiting their ack.

        The consumer holds every delivery until it is settled, those in the inbox too
        (it takes them before it hands them over); what the worker counts itself covers
        the time after a reconnect, when the new consumer holds none of the running jobs.
        """
        held = self._consumer.held if self._consumer is not None else 0
        return max(held, len(self._running) + len(self._buffer) + len(self._inbox))

    async def get_health(self) -> dict[str, Any]:
        """``status, uptime, jobs_processed, failure_rate, current_jobs, last_job_completed``.

        ``status`` is ``healthy``, ``degraded`` or ``unhealthy`` by the rule documented in
        ``uno_jobs.worker._observe`` (and the README); :meth:`health_reasons` says why.
        """
        return {
            "status": self._observer.health()[0],
            "uptime": self.stats.uptime(),
            "jobs_processed": self.stats.processed,
            "failure_rate": round(self.stats.failure_rate, 4),
            "current_jobs": len(self._running),
            "last_job_completed": self.stats.last_completed_iso(),
        }

    async def get_metrics(self) -> dict[str, Any]:
        """The metrics of WORKERS.md "Monitoring and Health Checks" (see ``uno_jobs.metrics``)."""
        return self.stats.snapshot(active_jobs=len(self._running))

    def health_reasons(self) -> list[str]:
        """Why the health status is not ``healthy`` (empty when it is)."""
        return self._observer.health()[1]

    @property
    def probe_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the ``/livez`` and ``/readyz`` probes (``None``: off)."""
        return self._observer.probe_address

    # -- deliveries ---------------------------------------------------------------------

    def _on_delivery(self, delivery: Delivery) -> None:
        """Called in the consumer thread."""
        self._inbox.append(delivery)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        self._traced = tracing_enabled()
        inbox = self._inbox
        # Deliveries can arrive while start() finishes: keep them, they start once running.
        accepting = self.state in (WorkerState.RUNNING, WorkerState.STARTING) and not self._stopping
        while inbox:
            delivery = inbox.popleft()
            self._cancels.arrived(delivery.tag)
            if not accepting:
                self._hand_back(delivery)
                continue
            rank = _LEVEL_RANK.get(delivery.level, 2)
            heapq.heappush(self._buffer, (rank, next(self._seq), delivery))
        self._fill_slots()

    def _fill_slots(self) -> None:
        if self.state != WorkerState.RUNNING or self._stopping:
            return
        assert self._loop is not None and self._idle is not None
        while self._buffer and len(self._running) < self.concurrency:
            _, _, delivery = heapq.heappop(self._buffer)
            run = _Run(delivery)
            self._running[delivery.tag] = run
            self._idle.clear()
            run.task = self._loop.create_task(self._run_job(run))

    def _hand_back(self, delivery: Delivery) -> None:
        assert self._consumer is not None
        self._consumer.reject(delivery.tag, requeue=True)

    def _hand_back_buffer(self) -> None:
        buffer, self._buffer = self._buffer, []
        for _, _, delivery in buffer:
            self._hand_back(delivery)

    def _job_done(self, run: _Run) -> None:
        self._running.pop(run.delivery.tag, None)
        if not self._running:
            assert self._idle is not None
            self._idle.set()
        self._fill_slots()

    # -- running one job ----------------------------------------------------------------

    async def _run_job(self, run: _Run) -> None:
        delivery = run.delivery
        try:
            try:
                message = decode(
                    delivery.body,
                    delivery.headers,
                    delivery.content_type,
                    delivery.content_encoding,
                    queue=self.queue_name,
                    priority=delivery.level,
                )
                task = self._resolver.resolve(message.task)
            except (MessageError, UnknownTaskError, ForbiddenTaskError) as exc:
                self._dead_letter(run, exc)
                return
            if await self._refuse_expired_or_lost(run, message):
                return
            due_at = _future_eta(message.eta, _eta_tolerance(message))
            if due_at is not None:
                assert self._outcomes is not None
                self._outcomes.defer(delivery, message, due_at)
                return
            await self._execute(run, message, task)
        except asyncio.CancelledError:
            if not run.discarded:
                raise
        except Exception:
            # A bug in the worker itself: never lose the message; the broker gets it back.
            log.exception("internal error handling delivery %s; handing it back", delivery.tag)
            if not run.discarded and self._consumer is not None:
                self._consumer.reject(delivery.tag, requeue=True)
        finally:
            self._job_done(run)

    def _dead_letter(self, run: _Run, exc: Exception) -> None:
        assert self._dead is not None
        if isinstance(exc, MessageError):
            reason, detail, job_id = exc.reason, exc.detail, exc.job_id
        elif isinstance(exc, ForbiddenTaskError):
            reason, detail, job_id = "forbidden_task", str(exc), None
        else:
            reason, detail, job_id = "unknown_task", str(exc), None
        self._dead.dead_letter(run.delivery, self.queue_name, reason, detail, job_id)

    async def _refuse_expired_or_lost(self, run: _Run, message: Message) -> bool:
        """Dead-letter a delivery that expired, was cancelled, or lost its worker too often."""
        assert self._dead is not None and self._store is not None
        if message.expires is not None and _is_past(message.expires):
            self._dead.dead_letter(
                run.delivery,
                self.queue_name,
                "expired",
                f"expired at {message.expires}",
                message.id,
            )
            return True
        # One store read serves every delivery that arrived before it (see CancelWatch).
        if await self._cancels.is_cancelled(
            self._store, message.id, run.delivery.tag, run.delivery.cancel_version
        ):
            self._dead.dead_letter(
                run.delivery,
                self.queue_name,
                "cancelled",
                CANCELLED_DETAIL,
                message.id,
            )
            return True
        if not run.delivery.redelivered:
            return False
        record = await asyncio.to_thread(self._store.get, message.id)
        if record is None:
            return False
        # A delivery whose record still says running lost its worker (the process died).
        lost = record.worker_lost + (1 if record.status == JobStatus.RUNNING else 0)
        message.worker_lost = max(message.worker_lost, lost)
        assert self._outcomes is not None
        return self._outcomes.dead_if_lost_too_often(run.delivery, message)

    async def _execute(self, run: _Run, message: Message, task: Task[..., Any]) -> None:
        """Run one attempt, inside its ``process {queue}`` span when tracing is on.

        Every line logged meanwhile (the task's too) carries the job's fields (``logs``).
        """
        started = time.time()
        self.stats.job_started(message.enqueued_at, started)
        events = self._events
        enqueued = message.enqueued_at
        wait = None if enqueued is None else max(0.0, started - enqueued)
        events.job_started(self.queue_name, message.task, wait)
        t0 = time.perf_counter()
        outcome = "abandoned"  # unless the attempt ends otherwise (immediate shutdown)
        fields = {
            "job_id": message.id,
            "task": message.task,
            "attempt": message.attempt,
            "worker_id": self.worker_id,
            "queue": self.queue_name,
        }
        try:
            with job_context(fields):
                if not self._traced:
                    outcome, _ = await self._attempt(run, message, task, started)
                    return
                with consumer_span(
                    self._system,
                    self.queue_name,
                    message.id,
                    message.task,
                    message.attempt,
                    message.extra_headers,
                ) as span:
                    outcome, error = await self._attempt(run, message, task, started)
                    if span.is_recording():
                        span.set_attribute("uno_jobs.outcome", outcome)
                        if error is not None:
                            fail_span(span, error)
        finally:
            events.job_finished(self.queue_name, message.task, outcome, time.perf_counter() - t0)

    async def _attempt(
        self, run: _Run, message: Message, task: Task[..., Any], started: float
    ) -> tuple[str, BaseException | None]:
        """Middleware, task, outcome; returns the outcome (``events.OUTCOMES``) and error."""
        assert self._executor is not None and self._outcomes is not None
        outcomes = self._outcomes
        outcomes.running(message, started)
        view = self._job_view(message) if self._middleware else None
        timeout = _effective_timeout(task.timeout, self.options.max_job_duration)
        t0 = time.perf_counter()
        try:
            if view is not None:
                try:
                    await self._middleware.before_execution(view, task.func)
                except SkipJob as skip:
                    if run.discarded:
                        return "abandoned", None
                    outcomes.skipped(run.delivery, message, skip)
                    return "skipped", None
            result = await self._executor.run(task, message.args, message.kwargs, timeout)
            if view is not None:
                result = await self._middleware.after_execution(view, task.func, result)
        except WorkerLostError as exc:
            if run.discarded:
                return "abandoned", None
            outcomes.worker_lost(run.delivery, message, str(exc))
            return "worker_lost", exc
        except (Exception, JobTimeLimitExceeded) as exc:
            if run.discarded:
                return "abandoned", None
            if view is not None:
                await self._middleware.on_error(view, task.func, exc)
            duration = time.perf_counter() - t0
            decision = self._retries.decide(task, message, exc)
            if decision.delay is None:
                outcomes.failed(run.delivery, message, exc, duration, decision.why)
                self._check_max_failures()
                return "failed", exc
            outcomes.retry(run.delivery, message, exc, decision.delay, duration)
            return "retried", exc
        if run.discarded:
            return "abandoned", None
        outcomes.succeeded(run.delivery, message, result, time.perf_counter() - t0)
        return "succeeded", None

    def _check_max_failures(self) -> None:
        limit = self.options.max_failures
        if limit and self.stats.consecutive_failures >= limit and self.state == WorkerState.RUNNING:
            log.error(
                "worker %s: %d consecutive task failures reached max_failures=%d; shutting down",
                self.worker_id,
                self.stats.consecutive_failures,
                limit,
            )
            self.exit_code = 3
            self._stop_soon(wait=True)

    def _job_view(self, message: Message) -> Any:
        return job_view(job_fields(message, self.worker_id))


def raise_gc_threshold(threshold: int | None) -> None:
    """Raise the interpreter's first collection threshold to at least ``threshold``.

    Process-wide, like the worker's signal handlers; never lowered, and left alone when
    ``threshold`` is ``None`` or automatic collection was turned off (threshold 0).
    """
    if threshold is None:
        return
    first, second, third = gc.get_threshold()
    if 0 < first < threshold:
        gc.set_threshold(threshold, second, third)
        log.debug("garbage-collection threshold raised from %d to %d", first, threshold)


_gc_frozen = False


def freeze_gc_once() -> None:
    """Collect the young generations, then freeze what is alive (``gc.freeze()``): once
    per process.

    Not a full collection: walking the whole heap (about 20 ms at a worker's start) is what
    the freeze saves later, and it would delay the first job; the garbage cycles already
    in the oldest generation (about ten objects at a CLI worker's start) stay uncollected.
    Left alone while automatic collection is off (the application manages it).
    """
    global _gc_frozen
    if _gc_frozen or not gc.isenabled():
        return
    _gc_frozen = True
    started = time.perf_counter()
    gc.collect(1)
    gc.freeze()
    log.debug(
        "%d objects moved to the permanent generation in %.0f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )


def _effective_timeout(task_timeout: float | None, max_job_duration: float | None) -> float | None:
    limits = [t for t in (task_timeout, max_job_duration) if t is not None]
    return min(limits) if limits else None


def _future_eta(iso: str | None, tolerance: float = 0.0) -> float | None:
    """The POSIX time of an ``eta`` still more than ``tolerance`` seconds ahead, else
    ``None`` (run it now)."""
    if iso is None:
        return None
    try:
        due_at = timestamp_from_iso(iso)
    except ValueError:
        return None
    return due_at if due_at > time.time() + tolerance else None


def _eta_tolerance(message: Message) -> float:
    """A message the broker held back until its ``eta`` (SQS ``DelaySeconds``, rounded
    up) is due by the producer's clock: a clock here slightly behind it must not send it
    round again. Any other early message waits for its ``eta`` exactly."""
    if message.extra_headers.get(BROKER_DELAY_HEADER):
        return BROKER_DELAY_TOLERANCE_SECONDS
    return 0.0


def _is_past(iso: str) -> bool:
    try:
        return timestamp_from_iso(iso) < time.time()
    except ValueError:
        return False
