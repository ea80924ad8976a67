"""Dead-lettering a delivery that cannot be run: record it, publish it to ``q.dead``, ack."""

from __future__ import annotations

import logging
import time
import uuid

from uno_jobs.broker import ConsumerThread, Delivery, Outgoing, dead_queue_name
from uno_jobs.message import Encoded, dead_letter_headers
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


class DeadLetterer:
    def __init__(self, consumer: ConsumerThread, recorder: Recorder, worker_id: str) -> None:
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
    ) -> None:
        """Record the job ``dead`` with ``reason``, publish it to ``q.dead``, then ack it.

        A message too broken to carry an id gets a generated one.
        """
        headers = delivery.headers
        header_id = headers.get("id")
        job_id = job_id or (header_id if isinstance(header_id, str) and header_id else None)
        job_id = job_id or f"dead-{uuid.uuid4()}"
        header_task = headers.get("task")
        task = header_task if isinstance(header_task, str) and header_task else "?"
        body = _raw_body(delivery.body)
        log.error(
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
                "worker_id": self._worker_id,
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
        outgoing = Outgoing(
            dead_queue_name(queue),
            Encoded(
                body=body,
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
