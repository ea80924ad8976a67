"""Dead letters of one queue: requeue and purge them, and dead-letter a cancelled delay.

A dead letter lives in two places, kept in agreement: the broker queue ``q.dead`` (the
message, with ``uno_dead_reason``, ``uno_dead_error`` and ``uno_dead_at`` headers) and
the job store's index (``JobStore.dead_letters``). ``Queue`` is the public face
(``requeue_dead``, ``purge_dead``, ``cancel``); this module does the work.

Requeue is one pass over ``q.dead`` (``Broker.sweep``): matching messages go to the level
queue of their priority, the others back to ``q.dead`` in their order, batch by batch;
each batch is published before it is acknowledged, so a crash can leave a message on both
queues but never on neither. A job's record is reset (``queued``, ``attempts`` 0), its
index entry and any cancellation removed *before* its message is published, because a
worker may run it at once; if the publish fails, all of that is put back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from uno_jobs.broker import (
    Broker,
    Outgoing,
    StoredMessage,
    dead_queue_name,
    level_queue_name,
)
from uno_jobs.message import PRIORITY_LEVELS, dead_letter_headers, timestamp_from_iso
from uno_jobs.schedule import BROKER_DELAY_HEADER, scheduled_message
from uno_jobs.store import DeadLetter, JobRecord, JobStatus, JobStore, JobUpdate, ScheduledJob

__all__ = ["CANCELLED_DETAIL", "DeadLetters"]

log = logging.getLogger("uno_jobs.queue")

#: The dead-letter error of a job cancelled before it started.
CANCELLED_DETAIL = "cancelled before it started"
# Messages taken from q.dead per round of a requeue or purge pass.
_SWEEP_BATCH = 100
_DEAD_HEADERS = ("uno_dead_reason", "uno_dead_error", "uno_dead_at")
# What a requeued job's record starts from again: queued, no attempt made, no outcome.
_REQUEUED_FIELDS: dict[str, Any] = {
    "status": JobStatus.QUEUED,
    "attempts": 0,
    "worker_lost": 0,
    "started_at": None,
    "finished_at": None,
    "worker_id": None,
    "result": None,
    "error_type": None,
    "error_message": None,
    "error_traceback": None,
    "dead_reason": None,
}

_Found = list[tuple[str, StoredMessage]]


class DeadLetters:
    """The dead letters of the logical queue ``queue``.

    Args:
        queue: The logical queue (its dead letters are on ``queue.dead``).
        broker: The queue's broker.
        store: Returns the queue's job store (opened on first use).
    """

    def __init__(self, queue: str, broker: Broker, store: Callable[[], JobStore]) -> None:
        self.queue = queue
        self._broker = broker
        self._store = store

    def requeue(self, wanted: set[str] | None) -> list[str]:
        """Move the dead letters of ``wanted`` (all when ``None``) back to the queue.

        Returns the ids moved, in ``q.dead`` order. A second copy of a job on ``q.dead``
        (at-least-once publishing can leave one) is dropped with a warning.
        """
        if wanted is not None and not wanted:
            return []
        dead_queue = dead_queue_name(self.queue)
        moved: list[str] = []
        seen: set[str] = set()
        with self._broker.sweep(dead_queue) as sweep:
            while batch := sweep.take(_SWEEP_BATCH):
                items: list[Outgoing] = []
                found: _Found = []
                for message in batch:
                    job_id = message.job_id
                    if job_id is None or (wanted is not None and job_id not in wanted):
                        items.append(Outgoing(dead_queue, message.encoded()))
                    elif job_id in seen:
                        log.warning("dropping a second copy of dead letter %s", job_id)
                    else:
                        seen.add(job_id)
                        found.append((job_id, message))
                records = {job_id: self._store().get(job_id) for job_id, _ in found}
                try:
                    items += self._reset(found, records)
                    sweep.settle(items)
                except BaseException:
                    self._restore(found, records)
                    raise
                moved += [job_id for job_id, _ in found]
        return moved

    def purge(self, *, expired: bool) -> int:
        """Empty ``q.dead`` and the queue's index entries; returns the messages removed.

        With ``expired``, only what is older than the store's retention goes: the index
        entries of every queue (``purge_expired``) and the messages of this ``q.dead``.
        """
        dead_queue = dead_queue_name(self.queue)
        store = self._store()
        if not expired:
            removed = self._broker.purge([dead_queue])
            store.remove_dead_letters(self.queue)
            return removed
        now = time.time()
        cutoff = now - store.retention_seconds
        store.purge_expired(now)
        removed = 0
        with self._broker.sweep(dead_queue) as sweep:
            while batch := sweep.take(_SWEEP_BATCH):
                kept = [m for m in batch if not _dead_before(m, cutoff)]
                removed += len(batch) - len(kept)
                sweep.settle([Outgoing(dead_queue, m.encoded()) for m in kept])
        return removed

    def cancelled_from_schedule(self, entry: ScheduledJob, record: JobRecord, now: float) -> None:
        """A cancelled job taken out of the schedule: publish it to ``q.dead``, record it.

        If the publish fails the entry goes back into the schedule: the job is still
        cancelled, so the worker that receives it when due dead-letters it.
        """
        store = self._store()
        message, _ = scheduled_message(entry)
        job_id, task, queue = record.id, record.task, record.queue
        headers = dead_letter_headers(
            message.headers, reason="cancelled", error=CANCELLED_DETAIL, dead_at=now
        )
        dead = dataclasses.replace(message, headers=headers, properties={"correlation_id": job_id})
        try:
            self._broker.publish([Outgoing(dead_queue_name(queue), dead)])
        except BaseException:
            store.schedule(entry)
            raise
        fields = {
            "status": JobStatus.DEAD,
            "dead_reason": "cancelled",
            "error_message": CANCELLED_DETAIL,
            "finished_at": now,
        }
        store.apply([JobUpdate(job_id, task, queue, fields)])
        store.add_dead_letter(DeadLetter(job_id, task, queue, "cancelled", CANCELLED_DETAIL, now))

    def _reset(self, found: _Found, records: Mapping[str, JobRecord | None]) -> list[Outgoing]:
        """Reset the records of ``found`` (before publishing) and build their messages."""
        if not found:
            return []
        store, now = self._store(), time.time()
        updates: list[JobUpdate] = []
        items: list[Outgoing] = []
        for job_id, message in found:
            record = records[job_id]
            headers = _requeued_headers(message.headers, job_id, now)
            task = headers.get("task")
            task = task if isinstance(task, str) and task else (record.task if record else "?")
            level = headers.get("uno_priority")
            if level not in PRIORITY_LEVELS:
                level = record.priority if record else "normal"
            fields = {**_REQUEUED_FIELDS, "enqueued_at": now}
            updates.append(JobUpdate(job_id, task, self.queue, fields))
            items.append(Outgoing(level_queue_name(self.queue, level), message.encoded(headers)))
        ids = [job_id for job_id, _ in found]
        # Before the publish: a worker may run the job at once and must find it queued and
        # no longer cancelled.
        store.apply(updates)
        store.uncancel(ids)
        store.remove_dead_letters(self.queue, ids)
        return items

    def _restore(self, found: _Found, records: Mapping[str, JobRecord | None]) -> None:
        """The publish failed: the messages stay on ``q.dead``, so their records go back."""
        store = self._store()
        for job_id, message in found:
            headers = message.headers
            reason = str(headers.get("uno_dead_reason") or "unknown")
            error = headers.get("uno_dead_error")
            dead_at = headers.get("uno_dead_at")
            dead_at = float(dead_at) if isinstance(dead_at, (int, float)) else time.time()
            record = records.get(job_id)
            task = record.task if record else str(headers.get("task") or "?")
            if record is None:
                fields: dict[str, Any] = {
                    "status": JobStatus.DEAD,
                    "dead_reason": reason,
                    "error_message": error,
                    "finished_at": dead_at,
                }
            else:
                old = record.to_dict()
                fields = {name: old[name] for name in (*_REQUEUED_FIELDS, "enqueued_at")}
            try:
                store.apply([JobUpdate(job_id, task, self.queue, fields)])
                entry = DeadLetter(job_id, task, self.queue, reason, _text(error), dead_at)
                store.add_dead_letter(entry)
                if reason == "cancelled":
                    store.cancel(job_id, dead_at)
            except Exception:
                log.exception("could not restore the dead-letter record of job %s", job_id)


def _requeued_headers(headers: Mapping[str, Any], job_id: str, now: float) -> dict[str, Any]:
    """The headers of a dead letter sent again as a fresh job (Celery's ``retries`` 0)."""
    out = {k: v for k, v in headers.items() if k not in _DEAD_HEADERS}
    out["retries"] = 0
    out["uno_worker_lost"] = 0
    out["eta"] = None
    out.pop(BROKER_DELAY_HEADER, None)
    out["uno_enqueued_at"] = now
    expires = out.get("expires")
    if isinstance(expires, str) and _is_past(expires, now):
        out["expires"] = None
    if not isinstance(out.get("id"), str) or not out["id"]:
        out["id"] = job_id  # the id the dead-letterer gave a message that had none
    return out


def _is_past(iso: str, now: float) -> bool:
    try:
        return timestamp_from_iso(iso) <= now
    except ValueError:
        return False


def _dead_before(message: StoredMessage, cutoff: float) -> bool:
    dead_at = message.headers.get("uno_dead_at")
    return isinstance(dead_at, (int, float)) and dead_at <= cutoff


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
