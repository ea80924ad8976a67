"""The worker's copy of the store's cancelled job ids.

``Queue.cancel`` writes the id into the store (with a version counter that moves on) before
it returns. A job whose ``cancel()`` returned before its delivery must not run, so before
a delivery starts the worker needs a look at the store taken *after* the delivery arrived.
Asking the store for every job would cost a round trip per job; instead one refresh serves
every delivery that arrived before it began, and it is one cheap read of the version
while nothing changed (the ids come only when the version moved on).

Delivery tags grow in the order the consumer thread received the messages, and the event
loop tells this object the newest tag it took from its inbox (``arrived``). A refresh
remembers the newest tag it covers: it began after that delivery was received, so it saw
every cancellation that was made before. A delivery with a newer tag waits for the next
refresh. A store that says its reads are local (``local_reads``: SQLite in WAL mode,
memory) is read on the event loop, at once: a lone delivery then starts without waiting
for a thread hop there and back (about half a millisecond on an idle machine). A store
with a read bounded to a fraction of a second (``cancellations_quick``: Redis, 0.25 s) is
read on the loop too, unless that read gives up; then, and for any other store
(plugins), the read is made in a thread (``asyncio.to_thread``).

A delivery may come with the version as the broker read it when it handed the message
out (``Delivery.cancel_version``: uno_jobs' Redis channel reads a Redis store's version in
the script that takes the messages, when both share a database). ``cancel`` moves the
version on before it returns, so that reading covers every cancellation made before the
delivery: when it is the version whose ids are held here, the delivery needs no read at
all (on Redis, a round trip less before a job starts). Any other reading is ignored and
the refresh above runs.
"""

from __future__ import annotations

import asyncio

from uno_jobs.store import JobStore

__all__ = ["CancelWatch"]


class CancelWatch:
    """Cancelled ids as of the last refresh, and which deliveries that refresh covers.

    Used from the event loop only.
    """

    def __init__(self) -> None:
        self._ids: frozenset[str] = frozenset()
        self._version: int | None = None
        self._latest = 0  # the newest delivery tag the event loop has taken
        self._covered = 0  # deliveries up to this tag arrived before the last refresh began
        self._refresh: asyncio.Task[None] | None = None

    def arrived(self, tag: int) -> None:
        """Note a delivery taken from the inbox (tags grow in the order of receipt)."""
        if tag > self._latest:
            self._latest = tag

    async def is_cancelled(
        self, store: JobStore, job_id: str, tag: int, seen_version: int | None = None
    ) -> bool:
        """Whether ``job_id`` was cancelled before its delivery ``tag`` arrived.

        Waits for a refresh that began after the delivery arrived, unless one did already;
        concurrent callers share it. ``seen_version``: the version the broker read when it
        handed the delivery out (module docstring); if it is the one held, no refresh.

        Raises:
            Exception: whatever the store raised (the delivery is handed back).
        """
        self.arrived(tag)  # it has, whether or not the inbox said so
        if seen_version is not None and seen_version == self._version:
            return job_id in self._ids
        if self._covered < tag and self._refresh is None:
            # Read here, on the loop, where the store allows it. Not while a refresh is
            # in a thread: two reads at once could leave an older answer last.
            covers = self._latest  # every one of them arrived before this read begins
            if getattr(store, "local_reads", False):
                self._update(*store.cancellations(self._version), covers)
            else:
                quick = getattr(store, "cancellations_quick", None)
                answer: tuple[int, frozenset[str] | None] | None = (
                    None if quick is None else quick(self._version)
                )
                if answer is not None:
                    self._update(answer[0], answer[1], covers)
        while self._covered < tag:
            refresh = self._refresh
            if refresh is None:
                refresh = asyncio.ensure_future(self._fetch(store))
                refresh.add_done_callback(_retrieve)
                self._refresh = refresh
            # Shielded: a job cancelled while it waits must not cancel the shared refresh.
            await asyncio.shield(refresh)
        return job_id in self._ids

    async def _fetch(self, store: JobStore) -> None:
        covers = self._latest
        try:
            version, ids = await asyncio.to_thread(store.cancellations, self._version)
        finally:
            self._refresh = None
        self._update(version, ids, covers)

    def _update(self, version: int, ids: frozenset[str] | None, covers: int) -> None:
        if ids is not None:
            self._ids = ids
        self._version = version
        self._covered = max(self._covered, covers)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a failed refresh's error as seen: every waiter got it already."""
    if not task.cancelled():
        task.exception()
