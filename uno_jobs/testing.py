"""A pytest plugin for applications: test your tasks without a broker.

Installed with uno_jobs and loaded by pytest through its ``pytest11`` entry point. It
gives two fixtures:

- ``uno_queue``: a ``Queue`` on kombu's in-memory transport with an in-memory job store,
  private to the test;
- ``uno_worker``: runs a worker on that queue until it is idle (nothing waiting, running
  or scheduled), so a test enqueues, calls ``uno_worker.run_until_idle()`` and checks the
  job records::

      async def test_report(uno_queue, uno_worker):
          job = await uno_queue.enqueue("generate_report", args=["monthly", "pdf"])
          await uno_worker.run_until_idle()
          assert (await uno_queue.get_job(job.id)).result == "monthly.pdf"

  From a sync test use ``uno_worker.run_until_idle_sync()`` and ``uno_queue.enqueue_sync``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from uno_jobs.queue import Queue
from uno_jobs.worker import AsyncWorker, BaseWorker

__all__ = ["WorkerRunner", "uno_queue", "uno_worker"]


class WorkerRunner:
    """Runs a worker on a queue until the queue is idle.

    Args:
        queue: The queue to work on (its broker and store are used).
        worker_type: The worker class (default ``AsyncWorker``).
        options: More worker options (``allowed_modules``, ``middleware``, ...).
    """

    def __init__(
        self, queue: Queue, worker_type: type[BaseWorker] = AsyncWorker, **options: Any
    ) -> None:
        self.queue = queue
        self.worker_type = worker_type
        self.options = options
        self.last_worker: BaseWorker | None = None

    async def run_until_idle(self, timeout: float = 30.0, **options: Any) -> BaseWorker:
        """Start a worker, wait until nothing is waiting, running or scheduled, stop it.

        Returns:
            The stopped worker (its ``get_metrics()`` still answers).

        Raises:
            TimeoutError: the queue was not idle after ``timeout`` seconds.
        """
        worker = self.worker_type(
            queue_name=self.queue.name,
            broker_url=self.queue.broker_url,
            store_url=self.queue.store_url,
            poll_interval=0.05,
            **{**self.options, **options},
        )
        self.last_worker = worker
        await worker.start()
        try:
            await self._wait_idle(worker, timeout)
        finally:
            await worker.shutdown()
        return worker

    def run_until_idle_sync(self, timeout: float = 30.0, **options: Any) -> BaseWorker:
        """``run_until_idle`` for sync tests."""
        return asyncio.run(self.run_until_idle(timeout, **options))

    async def _wait_idle(self, worker: BaseWorker, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while True:
            busy = await self.queue.size() or worker.in_flight or self.queue.store.scheduled_count()
            now = time.monotonic()
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= 0.05:
                return  # idle twice in a row: nothing was in flight between the looks
            if now > deadline:
                raise TimeoutError(f"queue {self.queue.name!r} still busy after {timeout:g} s")
            await asyncio.sleep(0.01)


@pytest.fixture
def uno_queue() -> Iterator[Queue]:
    """A private in-memory queue and job store for one test."""
    suffix = uuid.uuid4().hex[:10]
    queue = Queue(f"test-{suffix}", broker_url="memory://", store_url=f"memory://test-{suffix}")
    try:
        yield queue
    finally:
        queue.close()


@pytest.fixture
def uno_worker(uno_queue: Queue) -> WorkerRunner:
    """Runs a worker on ``uno_queue`` until it is idle: ``await uno_worker.run_until_idle()``."""
    return WorkerRunner(uno_queue)
