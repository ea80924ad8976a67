"""``Queue``: enqueue jobs (async and sync, one or many), look them up, size and purge;
cancel jobs; list, requeue and purge dead letters.

Enqueue order: validate and encode (nothing is sent if the arguments are bad) → create
the job record (a duplicate id is refused) → publish, confirmed on RabbitMQ (or, with a
delay, write it to the store's schedule; on SQS a delay of up to 15 minutes is published
at once with ``DelaySeconds``) → return the handle. If the publish fails the
record is removed again and the error is raised: a returned job id is a job that exists.
Two stores and brokers do the record and the publish together (``_publish_with_records``):
a Redis store on the Redis broker's database writes both in one atomic script, and on
RabbitMQ the records of generated ids are written while the broker confirms.

Cancellation adds the job id to the store's cancelled ids before it returns; every worker
checks them (see ``uno_jobs.worker._cancels``) before it starts a delivery, so a job
cancelled before its delivery never runs. Dead letters are handled by
``uno_jobs.dead_letters``.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from uno_jobs.broker import (
    Broker,
    Outgoing,
    UncapturableError,
    dead_queue_name,
    level_queue_name,
    level_queues,
)
from uno_jobs.broker._publisher import CapturedCommands
from uno_jobs.config import redact_url, resolve_broker_url, resolve_store_url
from uno_jobs.dead_letters import DeadLetters
from uno_jobs.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DuplicateJobError,
    JobFailedError,
    JobNotFoundError,
    JobStateError,
    JobTimeoutError,
    PayloadError,
)
from uno_jobs.events import EventHub, JobEvents
from uno_jobs.message import DEFAULT_MAX_MESSAGE_BYTES, Message, encode, new_message, parse_priority
from uno_jobs.middleware import Middleware, MiddlewareChain, job_fields, job_view
from uno_jobs.plugins import get_plugins
from uno_jobs.schedule import mark_broker_delay, scheduled_entry
from uno_jobs.store import DeadLetter, JobRecord, JobStatus, JobStore, open_store
from uno_jobs.store._base import PushRefusedError, first_repeated, new_record
from uno_jobs.tasks import Task, get_default_registry
from uno_jobs.tracing import fail_span, messaging_system, producer_span, tracing_enabled

__all__ = ["JobHandle", "JobSpec", "Queue"]

#: A batch of at least this many jobs is prepared and sent with the cyclic garbage
#: collector paused (see ``_collector_paused``).
GC_PAUSE_BATCH = 100
#: Jobs per script of a large Redis batch sent in pieces (``_publish_with_records``).
REDIS_PIECE_JOBS = 250
#: From this many jobs, a batch to the embedded broker has its records written by the
#: queue's record thread while this thread sends (``_publish_with_records``).
RECORD_THREAD_JOBS = 100


@contextmanager
def _collector_paused(count: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch of ``count`` jobs is prepared
    and sent, if it is large.

    Every message, record and envelope of a batch lives until the batch is sent, so the
    collections its allocations trigger walk them again and again: about a tenth of a
    bulk enqueue's time. They are freed by reference counting right after, and the pause
    lasts as long as the batch does. Small batches, and a process whose collector is off,
    are left alone.
    """
    if count < GC_PAUSE_BATCH or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(slots=True)
class _Prepared:
    """One job between ``_prepare`` and ``_send``: encoded, and its producer span if traced.

    ``held_seconds``: the broker holds the message back this long (SQS ``DelaySeconds``)
    instead of the store's schedule holding the job for ``delay``. ``own_id``: the
    caller chose the job id (it must be refused, before anything is sent, if it exists).
    """

    message: Message
    encoded: Any
    delay: float | None
    span: Any = None
    held_seconds: int | None = None
    own_id: bool = False


def _end_spans(prepared: Iterable[_Prepared], exc: BaseException | None) -> None:
    """End the producer spans of ``prepared``, recording ``exc`` when sending failed."""
    for item in prepared:
        if item.span is not None:
            if exc is not None:
                fail_span(item.span, exc)
            item.span.end()


def _start_exporter(item: Any, queue: Queue) -> Any:
    """A metrics exporter for a producer: a plugin's by name (``factory(queue)``) or as is."""
    if isinstance(item, str):
        item = get_plugins().lookup("metrics exporters", item)(queue)
    start = getattr(item, "start", None)
    if callable(start):
        start()
    return item


class _QueueOptions(BaseModel):
    model_config = ConfigDict(
        defer_build=True, extra="forbid", frozen=True, arbitrary_types_allowed=True
    )

    name: str = Field("default", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")
    broker_url: str | None = None
    store_url: str | None = None
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    middleware: list[Middleware] = Field(default_factory=list)
    metrics_exporters: list[Any] = Field(default_factory=list)


@dataclass(frozen=True)
class JobSpec:
    """One job for ``Queue.enqueue_many``."""

    task: str | Task[..., Any]
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    priority: str | None = None
    delay: float | None = None
    job_id: str | None = None
    expires: float | datetime | None = None


class JobHandle:
    """A job that was enqueued: its id, and a way to wait for its outcome."""

    def __init__(self, job_id: str, queue: Queue) -> None:
        self.id = job_id
        self.queue = queue

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r}, queue={self.queue.name!r})"

    async def get(self) -> JobRecord:
        """The job's current record."""
        return await self.queue.get_job(self.id)

    async def wait(self, timeout: float | None = None, poll_interval: float = 0.05) -> Any:
        """Wait for the job to finish and return its result.

        Raises:
            JobFailedError: the job ended ``failed`` or ``dead``.
            JobTimeoutError: it had not finished after ``timeout`` seconds.
        """
        return await asyncio.to_thread(self.wait_sync, timeout, poll_interval)

    def wait_sync(self, timeout: float | None = None, poll_interval: float = 0.05) -> Any:
        """Blocking ``wait`` for sync code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.005, poll_interval)
        while True:
            record = self.queue.get_job_sync(self.id)
            if record.finished:
                if record.status == JobStatus.SUCCEEDED:
                    return record.result
                raise JobFailedError(
                    record.id,
                    record.status.value,
                    record.error_type,
                    record.error_message,
                    record.dead_reason,
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(self.id, timeout or 0.0, record.status.value)
            time.sleep(delay)
            delay = min(delay * 2, poll_interval)


class Queue:
    """A named queue on a broker, with its job store.

    Args:
        name: The logical queue (``default``). Its broker queues are ``name`` (normal
            priority, declared as Celery declares it), ``name.critical``, ``name.high``,
            ``name.low`` and ``name.dead``.
        broker_url: ``amqp://``, ``redis://``, ``sqs://`` or ``embedded://``; default from
            ``UNO_JOBS_BROKER_URL``, else the embedded broker.
        store_url: Where job records live; default from ``UNO_JOBS_STORE_URL``, else the
            broker's Redis, else the embedded SQLite store.
        max_message_bytes: Largest encoded message accepted by ``enqueue``.
        middleware: Middleware whose ``before_enqueue``/``after_enqueue`` hooks run here.
        metrics_exporters: Exporters (plugin names, or ``uno_jobs.events.JobEvents``
            objects) told of every job this queue enqueues (``job_enqueued``).

    With the OpenTelemetry SDK installed, each enqueued job gets a PRODUCER span
    ``send {name}`` whose context travels in the message (``traceparent``).
    """

    def __init__(
        self,
        name: str = "default",
        broker_url: str | None = None,
        store_url: str | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        middleware: Sequence[Middleware] = (),
        metrics_exporters: Sequence[Any] = (),
    ) -> None:
        try:
            opts = _QueueOptions(
                name=name,
                broker_url=broker_url,
                store_url=store_url,
                max_message_bytes=max_message_bytes,
                middleware=list(middleware),
                metrics_exporters=list(metrics_exporters),
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            option = ".".join(str(p) for p in err["loc"])
            raise ConfigurationError(f"Queue: option {option!r}: {err['msg']}") from None
        self.name = opts.name
        self.broker_url = resolve_broker_url(opts.broker_url)
        self.store_url = resolve_store_url(opts.store_url, self.broker_url)
        self.max_message_bytes = opts.max_message_bytes
        self._middleware = MiddlewareChain(opts.middleware)
        self._broker = Broker(self.broker_url)
        self._store: JobStore | None = None
        self._store_shares_broker: bool | None = None
        self._lock = threading.Lock()
        self._record_thread: tuple[int, ThreadPoolExecutor] | None = None  # (pid, executor)
        self._dead_letters = DeadLetters(self.name, self._broker, lambda: self.store)
        self._system = messaging_system(self._broker.spec.kind)
        self._exporters = [_start_exporter(item, self) for item in opts.metrics_exporters]
        self._events = EventHub([e for e in self._exporters if isinstance(e, JobEvents)])

    def __repr__(self) -> str:
        return (
            f"Queue({self.name!r}, broker={self._broker.spec.display!r}, "
            f"store={redact_url(self.store_url)!r})"
        )

    @property
    def store(self) -> JobStore:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.store_url)
            return self._store

    # -- enqueue ------------------------------------------------------------------------

    async def enqueue(
        self,
        task: str | Task[..., Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        delay: float | None = None,
        job_id: str | None = None,
        expires: float | datetime | None = None,
    ) -> JobHandle:
        """Enqueue one job; returns once the broker has it.

        Args:
            task: A registered task name, a dotted module path, or a ``Task``.
            args: Positional arguments (JSON-serialisable).
            kwargs: Keyword arguments (JSON-serialisable).
            priority: ``critical``, ``high``, ``normal`` or ``low`` (default: the task's).
            delay: Seconds to wait before the job may start.
            job_id: Your own id; an id that exists already is refused.
            expires: Seconds from now, or a datetime, after which the job is not run.

        Raises:
            PayloadError: arguments not JSON-serialisable or too large.
            DuplicateJobError: ``job_id`` exists already.
            ConfigurationError: an unknown priority or a negative delay.
            BrokerUnavailableError: the broker is down or did not confirm in time.
        """
        spec = JobSpec(task, args, kwargs or {}, priority, delay, job_id, expires)
        return (await self.enqueue_many([spec]))[0]

    def enqueue_sync(
        self,
        task: str | Task[..., Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        delay: float | None = None,
        job_id: str | None = None,
        expires: float | datetime | None = None,
    ) -> JobHandle:
        """``enqueue`` for sync code (web request handlers); same arguments and errors."""
        spec = JobSpec(task, args, kwargs or {}, priority, delay, job_id, expires)
        return self.enqueue_many_sync([spec])[0]

    async def enqueue_many(self, jobs: Iterable[JobSpec]) -> list[JobHandle]:
        """Enqueue many jobs in one batch (one store write, confirms awaited together)."""
        specs = list(jobs)
        # Paused through the send too (other coroutines run meanwhile with the collector
        # off, for as long as the batch takes): re-enabled in between, it would walk the
        # whole batch, alive until sent, once or more (a tenth of the batch's time).
        with _collector_paused(len(specs)):
            prepared = self._prepare_all(specs)
            if self._middleware:
                try:
                    for item in prepared:
                        await self._middleware.before_enqueue(self._view(item.message))
                except BaseException as exc:
                    _end_spans(prepared, exc)
                    raise
            handles = await asyncio.to_thread(self._send, prepared)
            if self._middleware:
                for item in prepared:
                    await self._middleware.after_enqueue(self._view(item.message))
            del prepared  # freed before the collector is back
        return handles

    def enqueue_many_sync(self, jobs: Iterable[JobSpec]) -> list[JobHandle]:
        """``enqueue_many`` for sync code. Middleware hooks are not run here."""
        specs = list(jobs)
        with _collector_paused(len(specs)):
            return self._send(self._prepare_all(specs))

    def _prepare_all(self, jobs: Iterable[JobSpec]) -> list[_Prepared]:
        prepared: list[_Prepared] = []
        traced = tracing_enabled()  # once per batch: it reads the environment each time
        try:
            for spec in jobs:
                prepared.append(self._prepare(spec, traced))
        except BaseException as exc:
            _end_spans(prepared, exc)
            raise
        return prepared

    def _prepare(self, spec: JobSpec, traced: bool) -> _Prepared:
        if isinstance(spec.task, Task):
            name, default_priority = spec.task.name, spec.task.priority
        elif isinstance(spec.task, str) and spec.task:
            registered = get_default_registry().get(spec.task)
            name = spec.task
            default_priority = registered.priority if registered else "normal"
        else:
            raise ConfigurationError(f"task must be a task name or a Task, got {spec.task!r}")
        priority = parse_priority(spec.priority or default_priority)
        delay = _check_delay(spec.delay)
        if spec.job_id is not None and (not isinstance(spec.job_id, str) or not spec.job_id):
            raise ConfigurationError(f"job_id must be a non-empty string, got {spec.job_id!r}")
        if not isinstance(spec.args, (list, tuple)):
            raise PayloadError(f"task {name}: args must be a list or tuple, got {spec.args!r}")
        if type(spec.kwargs) is not dict and not isinstance(spec.kwargs, Mapping):
            raise PayloadError(f"task {name}: kwargs must be a mapping, got {spec.kwargs!r}")
        message = new_message(  # it copies args and kwargs
            name,
            spec.args,
            spec.kwargs,
            queue=self.name,
            priority=priority,
            job_id=spec.job_id,
        )
        if spec.expires is not None:
            message.expires = _expires_iso(spec.expires)
        held_seconds = None
        if delay:
            message.eta = _iso(time.time() + delay)
            routing_key = level_queue_name(self.name, priority)
            held_seconds = self._broker.spec.delay_seconds(routing_key, delay)
            mark_broker_delay(message.extra_headers, held_seconds)
        span = None
        if traced:
            # Its context goes into the headers, so it is started before encoding; the
            # span ends in _send once the broker has the message (or the send failed).
            span = producer_span(self._system, self.name, message.id, name, message.extra_headers)
        try:
            encoded = encode(message, max_bytes=self.max_message_bytes)
        except BaseException as exc:
            _end_spans([_Prepared(message, None, delay, span)], exc)
            raise
        return _Prepared(message, encoded, delay, span, held_seconds, spec.job_id is not None)

    def _send(self, prepared: list[_Prepared]) -> list[JobHandle]:
        try:
            handles = self._send_and_record(prepared)
        except BaseException as exc:
            _end_spans(prepared, exc)
            raise
        _end_spans(prepared, None)
        if self._events:
            for item in prepared:
                self._events.job_enqueued(self.name, item.message.task, item.message.priority)
        return handles

    def _send_and_record(self, prepared: list[_Prepared]) -> list[JobHandle]:
        ids = [item.message.id for item in prepared]
        repeated = first_repeated(ids)
        if repeated is not None:
            raise DuplicateJobError(repeated)
        now = time.time()
        records = [
            new_record(
                item.message.id,
                item.message.task,
                self.name,
                item.message.priority,
                JobStatus.SCHEDULED if item.delay else JobStatus.QUEUED,
                now,
            )
            for item in prepared
        ]
        # Jobs the broker holds back go out now with the others (their records say
        # "scheduled" until a worker starts them); the rest of the delayed ones wait in
        # the store's schedule.
        outgoing = [
            Outgoing(
                level_queue_name(self.name, item.message.priority),
                item.encoded,
                item.held_seconds,
            )
            for item in prepared
            if not item.delay or item.held_seconds
        ]
        store = self.store
        if len(outgoing) == len(prepared) and self._publish_with_records(
            store, records, outgoing, own_ids=any(item.own_id for item in prepared)
        ):
            return [JobHandle(i, self) for i in ids]
        store.create_many(records)
        try:
            self._broker.publish(outgoing)
            for item in prepared:
                if item.delay and not item.held_seconds:
                    m = item.message
                    store.schedule(
                        scheduled_entry(
                            m.id,
                            m.task,
                            self.name,
                            level_queue_name(self.name, m.priority),
                            now + item.delay,
                            item.encoded,
                        )
                    )
        except BaseException:
            store.delete(ids)
            raise
        return [JobHandle(i, self) for i in ids]

    def _publish_with_records(
        self,
        store: JobStore,
        records: list[JobRecord],
        outgoing: list[Outgoing],
        own_ids: bool,
    ) -> bool:
        """Write the records and publish together, where the store and broker allow it;
        ``False`` if they don't (the caller writes the records first, then publishes).

        - A Redis store on the broker's own Redis database: one atomic script writes the
          records and pushes the messages (one round trip instead of two; a duplicate id
          refuses both).
        - RabbitMQ: the records are written while the broker confirms the messages (the
          confirm round trip hides the write). Not with ids of the caller's, which must
          be refused before anything is sent. A worker may start a job before its record
          is written (it then creates the record); ``create_missing`` leaves that record
          as it is. If the record write fails, its error is raised after the confirms,
          and the messages, already with the broker, are not taken back.
        - The embedded broker, a batch of ``RECORD_THREAD_JOBS`` or more with no ids of
          the caller's: the records are written in a thread while the messages go into
          the broker's file, on the same terms (``_publish_beside_records``).
        """
        kind = self._broker.spec.kind
        create_and_push = getattr(store, "create_and_push", None)
        if kind == "redis" and create_and_push is not None and self._store_is_broker_db(store):
            in_pieces = getattr(store, "create_and_push_pieces", None)
            if (
                len(outgoing) <= REDIS_PIECE_JOBS
                or own_ids
                or len({item.routing_key for item in outgoing}) > 1
            ):
                in_pieces = None
            try:
                first = self._broker.capture(outgoing[:REDIS_PIECE_JOBS] if in_pieces else outgoing)
            except UncapturableError:
                return False
            try:
                if in_pieces is None:
                    create_and_push(records, first)
                else:
                    in_pieces(self._redis_pieces(records, outgoing, first))
            except PushRefusedError as exc:
                raise BrokerUnavailableError(
                    self._broker.spec.display, f"Redis refused a publish: {exc}"
                ) from None
            return True
        create_missing = getattr(store, "create_missing", None)
        if kind not in ("amqp", "embedded") or own_ids or create_missing is None:
            return False
        if kind == "embedded":
            if len(records) < RECORD_THREAD_JOBS:
                return False
            self._publish_beside_records(store, create_missing, records, outgoing)
            return True
        written = False

        def write_records() -> None:
            nonlocal written
            create_missing(records)
            written = True

        try:
            self._broker.publish(outgoing, while_confirming=write_records)
        except BaseException:
            if written:
                store.delete([record.id for record in records])
            raise
        return True

    def _publish_beside_records(
        self,
        store: JobStore,
        create_missing: Callable[[Sequence[JobRecord]], None],
        records: list[JobRecord],
        outgoing: list[Outgoing],
    ) -> None:
        """A large batch to the embedded broker: the records are written in the queue's
        record thread while this thread puts the messages into the broker's file.

        SQLite inserts and commits with the GIL released, so the two files' writes
        overlap on a second core. As on RabbitMQ's path, a worker may start a job before
        its record is written (``create_missing`` then leaves the worker's record as it
        is); a failed publish deletes the records written; a failed record write is
        raised once the messages are in, and they are not taken back. (On RabbitMQ the
        same thread cost more than it saved: the frames it would overlap with are Python
        work, and the two threads took turns at the GIL; there the confirm wait hides
        the write instead.)
        """
        writing = self._records_executor().submit(create_missing, records)
        try:
            self._broker.publish(outgoing)
        except BaseException:
            if _succeeded(writing):
                store.delete([record.id for record in records])
            raise
        writing.result()

    def _records_executor(self) -> ThreadPoolExecutor:
        """The record thread's executor, made on first use, and made again in a forked
        child (the parent's thread is not there: work given to it would wait forever)."""
        with self._lock:
            held = self._record_thread
            if held is None or held[0] != os.getpid():
                executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"uno-records-{self.name}"
                )
                held = self._record_thread = (os.getpid(), executor)
            return held[1]

    def _redis_pieces(
        self, records: list[JobRecord], outgoing: list[Outgoing], first: CapturedCommands
    ) -> Iterator[tuple[list[JobRecord], CapturedCommands]]:
        """The records and publish commands of a Redis batch, ``REDIS_PIECE_JOBS`` jobs a
        piece (``first``: the first piece's commands), each captured as the store asks
        for it: while Redis runs the piece before."""
        yield records[:REDIS_PIECE_JOBS], first
        for start in range(REDIS_PIECE_JOBS, len(records), REDIS_PIECE_JOBS):
            piece = slice(start, start + REDIS_PIECE_JOBS)
            yield records[piece], self._broker.capture(outgoing[piece])

    def _store_is_broker_db(self, store: JobStore) -> bool:
        """Whether ``store`` is a Redis store on the broker's own database (asked once)."""
        if self._store_shares_broker is None:
            same_database = getattr(store, "same_database", None)
            self._store_shares_broker = bool(same_database and same_database(self.broker_url))
        return self._store_shares_broker

    def _view(self, message: Message) -> Any:
        return job_view(job_fields(message, None))

    # -- look-ups and admin ---------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobRecord:
        """The job's record: status, attempts, result or error, timings.

        Raises:
            JobNotFoundError: no record of this id (never enqueued, or past retention).
        """
        return await asyncio.to_thread(self.get_job_sync, job_id)

    def get_job_sync(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return record

    def job(self, job_id: str) -> JobHandle:
        """A handle for an existing job id (to ``wait`` on it)."""
        return JobHandle(job_id, self)

    async def size(self) -> int:
        """Jobs waiting on the broker, over every priority level (not the dead letters)."""
        return await asyncio.to_thread(self.size_sync)

    def size_sync(self) -> int:
        names = [name for name, _ in level_queues(self.name)]
        return sum(self._broker.sizes(names).values())

    async def sizes(self) -> dict[str, int]:
        """Waiting jobs per broker queue, dead letters included."""
        names = [name for name, _ in level_queues(self.name)] + [dead_queue_name(self.name)]
        return await asyncio.to_thread(self._broker.sizes, names)

    async def purge(self) -> int:
        """Delete every waiting job of every level; returns how many."""
        names = [name for name, _ in level_queues(self.name)]
        return await asyncio.to_thread(self._broker.purge, names)

    async def delete(self) -> None:
        """Delete this queue's broker queues (every level and the dead letters) and jobs."""
        names = [name for name, _ in level_queues(self.name)] + [dead_queue_name(self.name)]
        await asyncio.to_thread(self._broker.delete_queues, names)

    # -- cancellation -------------------------------------------------------------------

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job that has not started: it will not run, on any worker.

        A running job is not interrupted: its current attempt finishes and records its
        outcome, but it is not retried. The returned status says which case it was:

        - ``dead``: the job was waiting in the schedule (a delay or a retry delay); it
          was taken out and is ``dead`` with reason ``cancelled`` now, its message on
          ``q.dead``.
        - ``queued`` or ``retrying``: its message is on the broker; the worker that
          receives it dead-letters it (reason ``cancelled``) instead of running it.
        - ``scheduled``: its message is on the broker, held back until due (an SQS
          delay of up to 15 minutes, ``DelaySeconds``), or a worker is publishing it or
          putting it in the schedule (a retry delay) right now; as for ``queued``: it
          stays ``scheduled`` until it is delivered, then it is dead-lettered
          ``cancelled``.
        - ``running``: not interrupted; no further attempt will start.
        - a finished status: it finished between the check and the cancellation.

        Cancellations are kept for the store's retention (7 days by default).

        Raises:
            JobNotFoundError: no record of this id.
            JobStateError: the job had finished already (its status is in the error).
        """
        return await asyncio.to_thread(self.cancel_sync, job_id)

    def cancel_sync(self, job_id: str) -> JobStatus:
        """``cancel`` for sync code; same result and errors."""
        store = self.store
        record = store.get(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        if record.finished:
            raise JobStateError(job_id, record.status.value, "cancel")
        now = time.time()
        # Into the cancelled ids first: from here on no worker starts the job.
        store.cancel(job_id, now)
        entry = store.unschedule(job_id, now)
        if entry is not None:
            self._dead_letters.cancelled_from_schedule(entry, record, now)
            return JobStatus.DEAD
        current = store.get(job_id)
        return record.status if current is None else current.status

    # -- dead letters ---------------------------------------------------------------------

    async def dead_letters(
        self, limit: int = 100, *, every_queue: bool = False
    ) -> list[DeadLetter]:
        """This queue's dead letters (or every queue's), newest first.

        Entries older than the store's retention are left out (``purge_dead(expired=True)``
        deletes them).
        """
        return await asyncio.to_thread(self.dead_letters_sync, limit, every_queue=every_queue)

    def dead_letters_sync(self, limit: int = 100, *, every_queue: bool = False) -> list[DeadLetter]:
        """``dead_letters`` for sync code."""
        store = self.store
        entries = store.dead_letters(None if every_queue else self.name, limit)
        cutoff = time.time() - store.retention_seconds
        return [entry for entry in entries if entry.dead_at > cutoff]

    async def requeue_dead(self, job_ids: Iterable[str] | None = None) -> list[str]:
        """Put dead letters back on the queue, with their ids, as new jobs.

        Each goes to the level queue of its priority with its attempt count, retries and
        worker-lost count reset, its delay and a past expiry dropped; its record is
        ``queued`` with ``attempts=0`` again, and its dead-letter entry and any
        cancellation are removed. One pass over ``q.dead`` moves the matching messages and
        publishes the others back in their order (see ``Broker.sweep``).

        Args:
            job_ids: The jobs to requeue; ``None`` requeues every dead letter of the queue.

        Returns:
            The ids requeued, in ``q.dead`` order. An id that is missing was not on
            ``q.dead``.

        Raises:
            BrokerUnavailableError: the broker failed; what was not moved stays on
                ``q.dead`` (a message may be left on both, never on neither).
        """
        ids = None if job_ids is None else list(job_ids)
        return await asyncio.to_thread(self.requeue_dead_sync, ids)

    def requeue_dead_sync(self, job_ids: Iterable[str] | None = None) -> list[str]:
        """``requeue_dead`` for sync code; same arguments, result and errors."""
        return self._dead_letters.requeue(None if job_ids is None else set(job_ids))

    async def purge_dead(self, *, expired: bool = False) -> int:
        """Delete this queue's dead letters: the ``q.dead`` messages and their index entries.

        Args:
            expired: Delete only those older than the store's retention (the index
                entries of every queue, the messages of this queue's ``q.dead``).

        Returns:
            How many messages were removed from ``q.dead``.
        """
        return await asyncio.to_thread(self.purge_dead_sync, expired=expired)

    def purge_dead_sync(self, *, expired: bool = False) -> int:
        """``purge_dead`` for sync code."""
        return self._dead_letters.purge(expired=expired)

    def close(self) -> None:
        for exporter in self._exporters:
            stop = getattr(exporter, "stop", None)
            if callable(stop):
                stop()
        self._exporters = []
        self._broker.close()
        with self._lock:
            store, self._store = self._store, None
            records, self._record_thread = self._record_thread, None
        if records is not None and records[0] == os.getpid():
            records[1].shutdown(wait=True)
        if store is not None:
            store.close()

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)


def _succeeded(future: Future[None]) -> bool:
    """Whether ``future`` ended without an error (waiting for it to end)."""
    try:
        return future.exception() is None
    except BaseException:  # cancelled, or this wait was interrupted
        return False


def _check_delay(delay: float | None) -> float | None:
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or math.isnan(delay):
        raise ConfigurationError(f"delay must be a number of seconds, got {delay!r}")
    if delay < 0:
        raise ConfigurationError(f"delay must be >= 0 seconds, got {delay!r}")
    return float(delay) or None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


def _expires_iso(expires: float | datetime) -> str:
    if isinstance(expires, datetime):
        when = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
        return when.isoformat()
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= 0:
        raise ConfigurationError(f"expires must be seconds > 0 or a datetime, got {expires!r}")
    return (datetime.now(timezone.utc) + timedelta(seconds=expires)).isoformat()
