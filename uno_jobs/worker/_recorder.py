"""The recorder thread: writes job outcomes to the store in batches, then acks.

At-least-once hinges on the order here: an outcome is committed to the store first, and
only then is the message acknowledged (the ``after`` action of an entry). A store write
that fails is retried with backoff; its messages stay unacknowledged meanwhile, so a
worker that dies here loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from uno_jobs.store import DeadLetter, JobStore, JobUpdate, ScheduledJob

__all__ = ["Entry", "Recorder", "ResultSink"]

log = logging.getLogger("uno_jobs.worker")

_MAX_BATCH = 500
_MAX_BACKOFF_SECONDS = 5.0


class ResultSink(Protocol):
    """Also told every batch of updates, after the store (``CeleryResults``)."""

    def write(self, updates: Sequence[JobUpdate]) -> None: ...


@dataclass(slots=True)
class Entry:
    """Updates to write, a dead letter to index or a retry to schedule, and what to do after."""

    updates: Sequence[JobUpdate]
    dead: DeadLetter | None = None
    after: Callable[[], None] | None = None
    schedule: ScheduledJob | None = None


def _merge(updates: list[JobUpdate]) -> list[JobUpdate]:
    """One update per job: a job that started and finished within one batch is one write.

    Later fields win, so the result is what applying the updates in order would give.
    """
    merged: dict[str, JobUpdate] = {}
    for update in updates:
        earlier = merged.get(update.job_id)
        if earlier is None:
            merged[update.job_id] = update
        else:
            merged[update.job_id] = JobUpdate(
                update.job_id, update.task, update.queue, {**earlier.fields, **update.fields}
            )
    return list(merged.values())


class Recorder(threading.Thread):
    def __init__(self, store: JobStore, name: str, results: ResultSink | None = None) -> None:
        super().__init__(name=f"uno-recorder-{name}", daemon=True)
        self._store = store
        self._results = results
        self._inbox: queue.SimpleQueue[Entry | threading.Event | None] = queue.SimpleQueue()
        self._stopping = threading.Event()

    def put(self, entry: Entry) -> None:
        self._inbox.put(entry)

    def flush(self, timeout: float) -> bool:
        """Wait until everything put so far is written and its actions run."""
        done = threading.Event()
        self._inbox.put(done)
        return done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is pending and end; a store that keeps failing is given up on.

        Outcomes that could not be written are not acked, so the broker delivers those
        jobs again: nothing is lost.
        """
        self._stopping.set()
        self._inbox.put(None)
        self.join(timeout)

    def run(self) -> None:
        inbox = self._inbox
        running = True
        while running:
            first = inbox.get()
            batch: list[Entry] = []
            events: list[threading.Event] = []
            item: Entry | threading.Event | None = first
            while True:
                if item is None:
                    running = False
                elif isinstance(item, threading.Event):
                    events.append(item)
                else:
                    batch.append(item)
                if len(batch) >= _MAX_BATCH:
                    break
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            for event in events:
                event.set()

    def _write(self, batch: list[Entry]) -> None:
        try:
            written = self._write_with_retries(batch)
        except ValueError:
            # Bad data, not a store outage: retrying cannot help. Write entry by entry
            # so one bad update holds back only its own job (left unacknowledged).
            written = [entry for entry in batch if self._write_one(entry)]
        for entry in written:
            if entry.after is not None:
                try:
                    entry.after()
                except Exception:
                    log.exception("post-record action failed")

    def _write_with_retries(self, batch: list[Entry]) -> list[Entry]:
        updates = _merge([u for entry in batch for u in entry.updates])
        if not self._retrying(lambda: self._store_entries(updates, batch), updates, self._store):
            return []
        results = self._results
        # Apart from the store write, so that a retry never applies the updates twice.
        if (
            results is not None
            and updates
            and not self._retrying(lambda: results.write(updates), updates, results)
        ):
            return []
        return batch

    def _retrying(
        self, write: Callable[[], None], updates: list[JobUpdate], target: object
    ) -> bool:
        """Run ``write`` until it succeeds (True) or the recorder stops (False).

        A ``ValueError`` (bad data, not an outage) is raised at once.
        """
        backoff = 0.2
        while True:
            try:
                write()
                return True
            except ValueError:
                raise
            except Exception:
                log.exception(
                    "writing %d job update(s) to %r failed; retrying in %.1f s "
                    "(their messages stay unacknowledged)",
                    len(updates),
                    target,
                    backoff,
                )
                if self._stopping.wait(backoff):
                    log.error("recorder stopping: giving up on %d job update(s)", len(updates))
                    return False
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    def _store_entries(self, updates: list[JobUpdate], batch: list[Entry]) -> None:
        if updates:
            self._store.apply(updates)
        for entry in batch:
            if entry.dead is not None:
                self._store.add_dead_letter(entry.dead)
            if entry.schedule is not None:
                self._store.schedule(entry.schedule)

    def _write_one(self, entry: Entry) -> bool:
        try:
            self._write_with_retries([entry])
        except ValueError:
            log.exception(
                "job update refused by the store; its message stays unacknowledged: %r",
                entry.updates,
            )
            return False
        return True
