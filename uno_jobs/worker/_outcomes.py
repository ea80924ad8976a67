"""What happens after a job ran: its outcome recorded, then its message acked, retried,
handed back or dead-lettered. Every path writes the store first and touches the broker
only in the recorder's ``after`` action (at-least-once)."""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from typing import Any

from uno_jobs.broker import ConsumerThread, Delivery, Outgoing, level_queue_name
from uno_jobs.message import Message, encode, iso_from_timestamp
from uno_jobs.metrics import WorkerStats
from uno_jobs.plugins import get_plugins
from uno_jobs.retry import RetryContext, RetryPolicy
from uno_jobs.schedule import scheduled_entry
from uno_jobs.store import JobStatus, JobUpdate
from uno_jobs.tasks import Task
from uno_jobs.worker._deadletter import DeadLetterer
from uno_jobs.worker._executors import JobTimeLimitExceeded
from uno_jobs.worker._recorder import Entry, Recorder

__all__ = ["WORKER_LOST_LIMIT", "Outcomes", "RetryDecider", "resolve_policy"]

log = logging.getLogger("uno_jobs.worker")

WORKER_LOST_LIMIT = 3
# A retry re-sends a message that was accepted once; only the transport limits its size.
_RETRY_MAX_BYTES = 64 * 1024 * 1024


def resolve_policy(chosen: Any) -> RetryPolicy:
    """A retry policy object from a name (built-in or plugin) or an object."""
    if isinstance(chosen, str):
        factory = get_plugins().lookup("retry policies", chosen)
        policy: RetryPolicy = factory()
        return policy
    return chosen  # type: ignore[no-any-return]


class RetryDecider:
    """The delay before a failed job's next attempt, from its task's retry settings."""

    def __init__(self, default_policy: Any) -> None:
        self._default = resolve_policy(default_policy)
        self._by_name: dict[str, RetryPolicy] = {}

    def delay(self, task: Task[..., Any], message: Message, exc: BaseException) -> float | None:
        """Seconds until the next attempt, or ``None`` when the job has failed for good."""
        if message.attempt > task.max_retries:
            return None
        policy = self._policy_for(task)
        context = RetryContext(
            message.attempt, task.max_retries, task.retry_delay, exc, message.task
        )
        try:
            delay = policy.next_delay(context)
        except Exception:
            log.exception("retry policy %r raised; job %s is not retried", policy, message.id)
            return None
        return None if delay is None else max(0.0, float(delay))

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

    def failed(
        self, delivery: Delivery, message: Message, exc: BaseException, duration: float
    ) -> None:
        self._stats.job_finished(False, duration)
        self._log_failure(message, exc, "")
        fields = {
            "status": JobStatus.FAILED,
            "finished_at": time.time(),
            **_error_fields(exc),
            "dead_reason": "timeout" if isinstance(exc, JobTimeLimitExceeded) else None,
        }
        tag, consumer = delivery.tag, self._consumer
        self._recorder.put(Entry([self._update(message, fields)], after=lambda: consumer.ack(tag)))

    def retry(
        self,
        delivery: Delivery,
        message: Message,
        exc: BaseException,
        delay: float,
        duration: float,
    ) -> None:
        """Record the failed attempt and send the job again, now or after ``delay``.

        A delayed retry goes to the store's schedule (never held in memory); the message
        is acked only once the retry is recorded (scheduled, or published).
        """
        self._stats.job_finished(False, duration)
        self._log_failure(message, exc, f"; retrying in {delay:.3g} s")
        now = time.time()
        again = dataclasses.replace(
            message,
            retries=message.retries + 1,
            eta=iso_from_timestamp(now + delay) if delay else None,
            extra_headers=dict(message.extra_headers),
        )
        encoded = encode(again, max_bytes=_RETRY_MAX_BYTES)
        routing_key = level_queue_name(self._queue, message.priority)
        fields = {
            "status": JobStatus.SCHEDULED if delay else JobStatus.RETRYING,
            "attempts": message.attempt,
            **_error_fields(exc),
        }
        update = self._update(message, fields)
        tag, consumer = delivery.tag, self._consumer
        if delay:
            entry = scheduled_entry(
                message.id, message.task, self._queue, routing_key, now + delay, encoded
            )
            self._recorder.put(Entry([update], schedule=entry, after=lambda: consumer.ack(tag)))
        else:
            outgoing = Outgoing(routing_key, encoded)
            self._recorder.put(
                Entry([update], after=lambda: consumer.publish_then_ack(tag, outgoing))
            )

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
            extra={"job_id": message.id, "task": message.task, "worker_id": self._worker_id},
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
