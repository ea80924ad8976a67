"""Delayed jobs: kept in the store until due, then published (DESIGN.md §2).

A delayed job or retry is never held unacknowledged in a worker's memory. On SQS a delay
of up to 15 minutes is held by SQS itself (``DelaySeconds``, see
``BrokerSpec.delay_seconds``): the message is published at once, marked with
``BROKER_DELAY_HEADER``, and arrives when due. Any other delay is written to
the store's schedule (``JobStore.schedule``) and every worker runs a ``DueJobMover`` that
claims due entries atomically (a Lua script on Redis, ``UPDATE … RETURNING`` on SQLite),
publishes them and releases them. A mover that dies between claim and publish leaves its
entries due again once their lease ends: each job is published at least once, and once
in the normal case.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from uno_jobs.broker import Broker, Outgoing
from uno_jobs.message import Encoded
from uno_jobs.store import JobStatus, JobStore, JobUpdate, ScheduledJob

__all__ = [
    "BROKER_DELAY_HEADER",
    "BROKER_DELAY_TOLERANCE_SECONDS",
    "DueJobMover",
    "mark_broker_delay",
    "scheduled_entry",
]

log = logging.getLogger("uno_jobs.schedule")

#: Header of a message the broker holds back until its ``eta`` (SQS ``DelaySeconds``); its
#: value is the seconds asked for. Such a message arrives when due by the producer's clock.
BROKER_DELAY_HEADER = "uno_broker_delay"

#: How far a broker-held message's ``eta`` may still be ahead of the receiving worker's
#: clock and the job run anyway: clocks of hosts differ by some milliseconds to hundreds
#: of them, and sending the message back to wait for that long would cost a round trip
#: and a store write for nothing. Further ahead, the worker defers it as any early one.
BROKER_DELAY_TOLERANCE_SECONDS = 1.0


def mark_broker_delay(headers: dict[str, Any], seconds: int | None) -> None:
    """Mark ``headers`` as those of a message the broker holds for ``seconds``, or, with
    ``None``, clear a mark an earlier send left (a retry or a deferral re-sends headers)."""
    if seconds:
        headers[BROKER_DELAY_HEADER] = seconds
    else:
        headers.pop(BROKER_DELAY_HEADER, None)


_CLAIM_LIMIT = 200
_LEASE_SECONDS = 30.0


def scheduled_entry(
    job_id: str, task: str, queue: str, routing_key: str, due_at: float, encoded: Encoded
) -> ScheduledJob:
    """The store entry of a message to publish to ``routing_key`` at ``due_at``."""
    body = encoded.body.decode("utf-8")
    payload = {
        "task": task,
        "queue": queue,
        "body": body,
        "headers": encoded.headers,
        "properties": encoded.properties,
        "content_type": encoded.content_type,
        "content_encoding": encoded.content_encoding,
    }
    return ScheduledJob(job_id, routing_key, due_at, json.dumps(payload, separators=(",", ":")))


def scheduled_message(entry: ScheduledJob) -> tuple[Encoded, dict[str, Any]]:
    """The message a schedule entry holds, and the entry's other fields (task, queue)."""
    data = json.loads(entry.payload)
    encoded = Encoded(
        body=data["body"].encode("utf-8"),
        headers=data["headers"],
        properties=data["properties"],
        content_type=data["content_type"],
        content_encoding=data["content_encoding"],
    )
    return encoded, data


def _outgoing(entry: ScheduledJob) -> tuple[Outgoing, dict[str, Any]]:
    encoded, data = scheduled_message(entry)
    return Outgoing(entry.routing_key, encoded), data


#: How often each worker deletes store entries past retention (finished records, dead
#: letters, cancellations): any worker may, the deletes are idempotent.
PURGE_INTERVAL_SECONDS = 600.0


class DueJobMover(threading.Thread):
    """Publishes due scheduled jobs every ``interval`` seconds; purges expired entries.

    Every ``PURGE_INTERVAL_SECONDS`` (and once soon after start) it also calls the
    store's ``purge_expired``, so retention holds without a cron job.
    """

    def __init__(self, store: JobStore, broker: Broker, interval: float, name: str) -> None:
        super().__init__(name=f"uno-scheduler-{name}", daemon=True)
        self._store = store
        self._broker = broker
        self._interval = min(interval, 1.0)
        self._stopping = threading.Event()
        self._next_purge = time.monotonic() + min(30.0, PURGE_INTERVAL_SECONDS)

    @property
    def interval(self) -> float:
        """Seconds between polls."""
        return self._interval

    def set_interval(self, seconds: float) -> None:
        """Poll every ``seconds`` from the next wait on (a cluster follower polls rarely)."""
        self._interval = seconds

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.join(timeout)

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                while self.move_due() == _CLAIM_LIMIT and not self._stopping.is_set():
                    pass
            except Exception:
                log.exception("moving due jobs failed; will retry")
            if time.monotonic() >= self._next_purge:
                self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
                self.purge()

    def purge(self) -> int:
        """Delete the store's entries past retention now; returns how many (0 on error)."""
        try:
            removed = self._store.purge_expired(time.time())
        except Exception:
            log.exception("purging expired store entries failed; will retry")
            return 0
        if removed:
            log.info("purged %d store entries past retention", removed)
        return removed

    def move_due(self) -> int:
        """Publish what is due now; returns how many entries were claimed."""
        claimed = self._store.claim_due(time.time(), _CLAIM_LIMIT, _LEASE_SECONDS)
        if not claimed:
            return 0
        items: list[Outgoing] = []
        queued: list[JobUpdate] = []
        for entry in claimed:
            item, data = _outgoing(entry)
            items.append(item)
            queued.append(
                JobUpdate(entry.job_id, data["task"], data["queue"], {"status": JobStatus.QUEUED})
            )
        # Status first: once published, a worker may run the job and record its outcome
        # at once, which a later "queued" would overwrite.
        self._store.apply(queued)
        try:
            self._broker.publish(items)
        except BaseException:
            self._store.apply(
                [
                    JobUpdate(u.job_id, u.task, u.queue, {"status": JobStatus.SCHEDULED})
                    for u in queued
                ]
            )
            raise
        log.debug("published %d due job(s)", len(items))
        self._store.release_scheduled([e.job_id for e in claimed])
        return len(claimed)
