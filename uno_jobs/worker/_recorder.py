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

from uno_jobs.store import DeadLetter, JobStore, JobUpdate

__all__ = ["Entry", "Recorder"]

log = logging.getLogger("uno_jobs.worker")

_MAX_BATCH = 500
_MAX_BACKOFF_SECONDS = 5.0


@dataclass(slots=True)
class Entry:
    """Updates to write, an optional dead letter to index, and what to do after."""

    updates: Sequence[JobUpdate]
    dead: DeadLetter | None = None
    after: Callable[[], None] | None = None


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
    def __init__(self, store: JobStore, name: str) -> None:
        super().__init__(name=f"uno-recorder-{name}", daemon=True)
        self._store = store
        self._inbox: queue.SimpleQueue[Entry | threading.Event | None] = queue.SimpleQueue()
        self._stopped = threading.Event()

    def put(self, entry: Entry) -> None:
        self._inbox.put(entry)

    def flush(self, timeout: float) -> bool:
        """Wait until everything put so far is written and its actions run."""
        done = threading.Event()
        self._inbox.put(done)
        return done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
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
        self._stopped.set()

    def _write(self, batch: list[Entry]) -> None:
        updates = _merge([u for entry in batch for u in entry.updates])
        backoff = 0.2
        while True:
            try:
                if updates:
                    self._store.apply(updates)
                for entry in batch:
                    if entry.dead is not None:
                        self._store.add_dead_letter(entry.dead)
                break
            except Exception:
                log.exception(
                    "writing %d job update(s) to %r failed; retrying in %.1f s "
                    "(their messages stay unacknowledged)",
                    len(updates),
                    self._store,
                    backoff,
                )
                if self._stopped.wait(backoff):
                    return
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
        for entry in batch:
            if entry.after is not None:
                try:
                    entry.after()
                except Exception:
                    log.exception("post-record action failed")
