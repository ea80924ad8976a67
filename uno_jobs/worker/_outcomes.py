"""What happens after a job ran: its outcome recorded, then its message acked, retried,
handed back or dead-lettered. Every path writes the store first and touches the broker
only in the recorder's ``after`` action (at-least-once).

A failed attempt is retried or not by :class:`RetryDecider` (the order of its checks is in
``uno_jobs.retry``). Every failed attempt is appended to the record's ``errors``; the last
one leaves the job ``failed`` with a dead-letter entry (``timeout`` when it hit its time
limit, else ``max_retries_exceeded``) and a copy of its message on ``q.dead``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

from uno_jobs.broker import ConsumerThread, Delivery, Outgoing, dead_queue_name, level_queue_name
from uno_jobs.errors import Retry, SkipJob
from uno_jobs.message import Message, encode, iso_from_timestamp
from uno_jobs.metrics import WorkerStats
from uno_jobs.middleware import MiddlewareError
from uno_jobs.plugins import get_plugins
from uno_jobs.retry import RetryContext, RetryPolicy, is_retryable
from uno_jobs.schedule import mark_broker_delay, scheduled_entry
from uno_jobs.store import JobStatus, JobUpdate
from uno_jobs.store._base import ATTEMPT_ERROR, AttemptError
from uno_jobs.tasks import Task
from uno_jobs.worker._deadletter import DeadLetterer
from uno_jobs.worker._executors import JobTimeLimitExceeded
from uno_jobs.worker._recorder import Entry, Recorder

__all__ = ["WORKER_LOST_LIMIT", "Outcomes", "RetryDecider", "RetryDecision", "resolve_policy"]

log = logging.getLogger("uno_jobs.worker")

WORKER_LOST_LIMIT = 3
# A retry re-sends a message that was accepted once; only the transport limits its size.
_RETRY_MAX_BYTES = 64 * 1024 * 1024
_DEAD_DETAIL_CHARS = 1024


def resolve_policy(chosen: Any) -> RetryPolicy:
    """A retry policy object from a name (built-in or plugin) or an object."""
    if isinstance(chosen, str):
        factory = get_plugins().lookup("retry policies", chosen)
        policy: RetryPolicy = factory()
        return policy
    return chosen  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RetryDecision:
    """Whether a failed attempt is retried.

    Attributes:
        delay: Seconds until the next attempt; ``None``: the job has failed for good.
        why: Why it is not retried (empty when it is), for the log and the dead letter.
    """

    delay: float | None
    why: str = ""


class RetryDecider:
    """Decides whether and when a failed job runs again, from its task's retry settings."""

    def __init__(self, default_policy: Any) -> None:
        self._default = resolve_policy(default_policy)
        self._by_name: dict[str, RetryPolicy] = {}

    def decide(self, task: Task[..., Any], message: Message, exc: BaseException) -> RetryDecision:
        """The decision for the attempt ``message.attempt`` that raised ``exc``.

        In order: ``max_retries``; a ``Retry`` signal (its delay, or the policy's);
        ``dont_retry_on`` / ``retry_on`` (a ``MiddlewareError`` is matched by the
        exception its middleware raised); the policy's ``next_delay``.
        """
        if message.attempt > task.max_retries:
            if task.max_retries == 0:
                return RetryDecision(None, "no retries allowed (max_retries=0)")
            return RetryDecision(None, f"no retries left (max_retries={task.max_retries})")
        if isinstance(exc, Retry) and exc.delay is not None:
            return RetryDecision(exc.delay)
        if not isinstance(exc, Retry):
            cause = exc.__cause__ if isinstance(exc, MiddlewareError) else None
            subject = cause if cause is not None else exc
            if not is_retryable(subject, task.retry_on, task.dont_retry_on):
                name = type(subject).__name__
                if task.dont_retry_on and isinstance(subject, task.dont_retry_on):
                    return RetryDecision(None, f"{name} is in the task's dont_retry_on")
                return RetryDecision(None, f"{name} is not in the task's retry_on")
        policy = self._policy_for(task)
        context = RetryContext(
            message.attempt, task.max_retries, task.retry_delay, exc, message.task
        )
        try:
            delay = policy.next_delay(context)
        except Exception as policy_exc:
            log.exception("retry policy %r raised; job %s is not retried", policy, message.id)
            return RetryDecision(None, f"the retry policy raised {type(policy_exc).__name__}")
        if delay is None:
            return RetryDecision(None, f"the retry policy {type(policy).__name__} gave up")
        return RetryDecision(max(0.0, float(delay)))

    def _policy_for(self, task: Task[..., Any]) -> RetryPolicy:
        chosen = task.retry_policy
        if chosen is None:
            return self._default
        if not isinstance(chosen, str):
            return chosen  # type: ignore[no-any-return]
        policy = self._by_name.get(chosen)
        if policy is None:
            policy = self._by_name[chosen] = resolve_policy(chosen)
        return policy


def _error_fields(exc: BaseException) -> dict[str, Any]:
    return {
        "error_type": type(exc).__name__,
        "error_message": str(exc),
        "error_traceback": "".join(traceback.format_exception(exc))[-8192:],
    }


def _final_reason(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, JobTimeLimitExceeded) else "max_retries_exceeded"


class Outcomes:
    """Records outcomes for one worker and settles their messages afterwards."""

    def __init__(
        self,
        recorder: Recorder,
        consumer: ConsumerThread,
        dead: DeadLetterer,
        stats: WorkerStats,
        queue_name: str,
        worker_id: str,
    ) -> None:
        self._recorder = recorder
        self._consumer = consumer
        self._dead = dead
        self._stats = stats
        self._queue = queue_name
        self._worker_id = worker_id

    def _update(self, message: Message, fields: dict[str, Any]) -> JobUpdate:
        return JobUpdate(message.id, message.task, self._queue, fields)

    def running(self, message: Message, started: float) -> None:
        fields = {
            "status": JobStatus.RUNNING,
            "started_at": started,
            "worker_id": self._worker_id,
            "attempts": message.attempt,
            "worker_lost": message.worker_lost,
            "priority": message.priority,
        }
        self._recorder.put(Entry([self._update(message, fields)]))

    def succeeded(self, delivery: Delivery, message: Message, result: Any, duration: float) -> None:
        self._stats.job_finished(True, duration)
        fields = {"status": JobStatus.SUCCEEDED, "finished_at": time.time(), "result": result}
        tag, consumer = delivery.tag, self._consumer
        self._recorder.put(Entry([self._update(message, fields)], after=lambda: consumer.ack(tag)))

    def _attempt_error(self, message: Message, fields: dict[str, Any], now: float) -> AttemptError:
        return AttemptError(
            message.attempt, fields["error_type"], fields["error_message"], now, self._worker_id
        )

    def failed(
        self,
        delivery: Delivery,
        message: Message,
        exc: BaseException,
        duration: float,
        why: str,
    ) -> None:
        """The job failed for good (``why`` says why it is not retried).

        It is recorded ``failed`` with its error and a dead-letter entry (``timeout`` or
        ``max_retries_exceeded``), and its message is copied to ``q.dead`` before the ack.
        """
        self._stats.job_finished(False, duration)
        reason = _final_reason(exc)
        self._log_failure(
            message,
            exc,
            f"; not retried: {why}; the job failed ({reason}), "
            f"dead-lettered to {dead_queue_name(self._queue)}",
        )
        now = time.time()
        fields = {"status": JobStatus.FAILED, "finished_at": now, **_error_fields(exc)}
        if isinstance(exc, Retry):
            # The task asked for a retry that its max_retries does not allow: say so.
            fields["error_message"] = f"{exc}; not retried: {why} ({reason})"
        fields[ATTEMPT_ERROR] = self._attempt_error(message, fields, now)
        detail = f"{fields['error_type']}: {fields['error_message']}"
        if not isinstance(exc, Retry):
            detail = f"{detail} (not retried: {why})"
        self._dead.failed(
            delivery,
            self._queue,
            message.id,
            message.task,
            reason,
            detail[:_DEAD_DETAIL_CHARS],
            fields,
        )

    def skipped(self, delivery: Delivery, message: Message, skip: SkipJob) -> None:
        """A middleware's ``before_execution`` raised ``SkipJob``: dead, ``cancelled``."""
        detail = f"skipped by middleware {skip.middleware or '?'}: {skip.reason or 'no reason'}"
        self._dead.dead_letter(
            delivery,
            self._queue,
            "cancelled",
            detail[:_DEAD_DETAIL_CHARS],
            message.id,
            log_level=logging.WARNING,
        )

    def retry(
        self,
        delivery: Delivery,
        message: Message,
        exc: BaseException,
        delay: float,
        duration: float,
    ) -> None:
        """Record the failed attempt and send the job again, now or after ``delay``.

        A delayed retry is never held in memory: on SQS, up to 15 minutes, it is
        published at once with ``DelaySeconds``; otherwise it goes to the store's
        schedule. The message is acked only once the retry is recorded (scheduled) and,
        when it is sent now, published.
        """
        self._stats.job_finished(False, duration)
        self._log_failure(message, exc, f"; retrying in {delay:.3g} s")
        now = time.time()
        routing_key = level_queue_name(self._queue, message.priority)
        held_seconds = self._consumer.spec.delay_seconds(routing_key, delay) if delay else None
        again = dataclasses.replace(
            message,
            retries=message.retries + 1,
            eta=iso_from_timestamp(now + delay) if delay else None,
            extra_headers=dict(message.extra_headers),
        )
        mark_broker_delay(again.extra_headers, held_seconds)
        encoded = encode(again, max_bytes=_RETRY_MAX_BYTES)
        fields = {
            "status": JobStatus.SCHEDULED if delay else JobStatus.RETRYING,
            "attempts": message.attempt,
            **_error_fields(exc),
        }
        fields[ATTEMPT_ERROR] = self._attempt_error(message, fields, now)
        update = self._update(message, fields)
        if delay and not held_seconds:
            entry = scheduled_entry(
                message.id, message.task, self._queue, routing_key, now + delay, encoded
            )
            tag, consumer = delivery.tag, self._consumer
            self._recorder.put(Entry([update], schedule=entry, after=lambda: consumer.ack(tag)))
        else:
            self._send_then_ack(delivery, update, Outgoing(routing_key, encoded, held_seconds))

    def defer(self, delivery: Delivery, message: Message, due_at: float) -> None:
        """A delivery whose ``eta`` is still ahead (a Celery ``countdown``/``eta``): the job
        waits until then (in SQS with ``DelaySeconds`` when it can, else in the store's
        schedule) and the message is acked once it does.

        Celery's own worker holds such a message unacknowledged until its time; uno_jobs
        never does (DESIGN.md §2, "Retries and delays").
        """
        routing_key = level_queue_name(self._queue, message.priority)
        held_seconds = self._consumer.spec.delay_seconds(routing_key, due_at - time.time())
        again = dataclasses.replace(message, extra_headers=dict(message.extra_headers))
        mark_broker_delay(again.extra_headers, held_seconds)
        encoded = encode(again, max_bytes=_RETRY_MAX_BYTES)
        update = self._update(
            message, {"status": JobStatus.SCHEDULED, "priority": message.priority}
        )
        if held_seconds:
            self._send_then_ack(delivery, update, Outgoing(routing_key, encoded, held_seconds))
            return
        entry = scheduled_entry(message.id, message.task, self._queue, routing_key, due_at, encoded)
        tag, consumer = delivery.tag, self._consumer
        self._recorder.put(Entry([update], schedule=entry, after=lambda: consumer.ack(tag)))

    def _send_then_ack(self, delivery: Delivery, update: JobUpdate, outgoing: Outgoing) -> None:
        """Record ``update``, then publish ``outgoing`` and ack the delivery once the broker
        has it (a failed publish leaves the delivery to come again)."""
        tag, consumer = delivery.tag, self._consumer
        self._recorder.put(Entry([update], after=lambda: consumer.publish_then_ack(tag, outgoing)))

    def dead_if_lost_too_often(self, delivery: Delivery, message: Message) -> bool:
        if message.worker_lost < WORKER_LOST_LIMIT:
            return False
        self._dead.dead_letter(
            delivery,
            self._queue,
            "worker_lost",
            f"the job's worker was lost {message.worker_lost} times",
            message.id,
            worker_lost=message.worker_lost,
        )
        return True

    def worker_lost(self, delivery: Delivery, message: Message, detail: str) -> None:
        """The process running the job died (a process-pool child): count it, hand it back.

        Worker-lost deliveries are counted apart from retries; the third is dead-lettered
        with reason ``worker_lost``.
        """
        message.worker_lost += 1
        log.error(
            "job %s (%s): its process died (%s); worker-lost count %d",
            message.id,
            message.task,
            detail,
            message.worker_lost,
            extra={
                "job_id": message.id,
                "task": message.task,
                "attempt": message.attempt,
                "worker_id": self._worker_id,
                "queue": self._queue,
            },
        )
        if self.dead_if_lost_too_often(delivery, message):
            return
        fields = {"status": JobStatus.QUEUED, "worker_lost": message.worker_lost, "worker_id": None}
        tag, consumer = delivery.tag, self._consumer
        self._recorder.put(
            Entry(
                [self._update(message, fields)],
                after=lambda: consumer.reject(tag, requeue=True),
            )
        )

    def _log_failure(self, message: Message, exc: BaseException, then: str) -> None:
        log.warning(
            "job %s (%s) attempt %d failed: %s: %s%s",
            message.id,
            message.task,
            message.attempt,
            type(exc).__name__,
            exc,
            then,
            extra={
                "job_id": message.id,
                "task": message.task,
                "attempt": message.attempt,
                "worker_id": self._worker_id,
            },
        )
