"""Dead letters: record the job and its dead-letter entry, publish it to ``q.dead``, ack.

Two kinds of job end there: a message that cannot be run (status ``dead``: unknown task,
undecodable, expired, cancelled, lost its worker too often...) and a job whose last
attempt failed (status ``failed``, reason ``max_retries_exceeded`` or ``timeout``). Both
go through :class:`DeadLetterer`, the only publisher of dead letters.
"""

from __future__ import annotations

import logging
import time
import uuid

from uno_jobs.broker import ConsumerThread, Delivery, Outgoing, dead_queue_name
from uno_jobs.events import JobEvents
from uno_jobs.message import Encoded, dead_letter_headers, header_count
from uno_jobs.store import DeadLetter, JobStatus, JobUpdate
from uno_jobs.worker._recorder import Entry, Recorder

__all__ = ["DeadLetterer"]

log = logging.getLogger("uno_jobs.worker")

_LOG_BODY_BYTES = 1024


def _raw_body(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    return repr(body).encode("utf-8")


def _attempt(retries: object) -> int | None:
    """The attempt a delivery was (Celery's ``retries`` + 1), if its header says."""
    count = header_count(retries)
    return None if count is None else count + 1


class DeadLetterer:
    """Sends jobs to their queue's ``q.dead`` for one worker (through its recorder)."""

    def __init__(
        self,
        consumer: ConsumerThread,
        recorder: Recorder,
        worker_id: str,
        events: JobEvents | None = None,
    ) -> None:
        self._events = events or JobEvents()
        self._consumer = consumer
        self._recorder = recorder
        self._worker_id = worker_id

    def dead_letter(
        self,
        delivery: Delivery,
        queue: str,
        reason: str,
        detail: str,
        job_id: str | None,
        worker_lost: int | None = None,
        log_level: int = logging.ERROR,
    ) -> None:
        """Record the job ``dead`` with ``reason``, publish it to ``q.dead``, then ack it.

        A message too broken to carry an id gets a generated one. One log line at
        ``log_level`` shows the reason and the body cut to 1 KiB.
        """
        headers = delivery.headers
        header_id = headers.get("id")
        job_id = job_id or (header_id if isinstance(header_id, str) and header_id else None)
        job_id = job_id or f"dead-{uuid.uuid4()}"
        header_task = headers.get("task")
        task = header_task if isinstance(header_task, str) and header_task else "?"
        body = _raw_body(delivery.body)
        log.log(
            log_level,
            "dead-lettering job %s (task %s) on %s: %s: %s; body: %r",
            job_id,
            task,
            dead_queue_name(queue),
            reason,
            detail,
            body[:_LOG_BODY_BYTES],
            extra={
                "job_id": job_id,
                "task": task,
                "attempt": _attempt(headers.get("retries")),
                "worker_id": self._worker_id,
                "queue": queue,
                "dead_reason": reason,
            },
        )
        now = time.time()
        fields: dict[str, object] = {
            "status": JobStatus.DEAD,
            "dead_reason": reason,
            "error_message": detail,
            "finished_at": now,
            "worker_id": self._worker_id,
        }
        if worker_lost is not None:
            fields["worker_lost"] = worker_lost
        self._events.job_dead_lettered(queue, task, reason)
        self._send(delivery, queue, job_id, task, reason, detail, fields, now)

    def failed(
        self,
        delivery: Delivery,
        queue: str,
        job_id: str,
        task: str,
        reason: str,
        detail: str,
        fields: dict[str, object],
    ) -> None:
        """A job that failed for good: record ``fields`` (its ``failed`` status and error)
        with ``dead_reason`` and a dead-letter entry ``reason``, publish the message to
        ``q.dead``, then ack it. The caller has logged the failure.
        """
        now = time.time()
        fields = {**fields, "dead_reason": reason}
        self._send(delivery, queue, job_id, task, reason, detail, fields, now)

    def _send(
        self,
        delivery: Delivery,
        queue: str,
        job_id: str,
        task: str,
        reason: str,
        detail: str,
        fields: dict[str, object],
        now: float,
    ) -> None:
        headers = delivery.headers
        outgoing = Outgoing(
            dead_queue_name(queue),
            Encoded(
                body=_raw_body(delivery.body),
                headers=dead_letter_headers(headers, reason=reason, error=detail, dead_at=now),
                properties={"correlation_id": job_id},
                content_type=delivery.content_type or "application/octet-stream",
                content_encoding=delivery.content_encoding or "binary",
            ),
        )
        consumer, tag = self._consumer, delivery.tag
        self._recorder.put(
            Entry(
                [JobUpdate(job_id, task, queue, fields)],
                dead=DeadLetter(job_id, task, queue, reason, detail, now),
                after=lambda: consumer.publish_then_ack(tag, outgoing),
            )
        )
