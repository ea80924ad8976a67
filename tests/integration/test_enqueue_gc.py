"""Bulk enqueue pauses the cyclic garbage collector for the batch, and only then."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from uno_jobs import JobSpec, Queue
from uno_jobs.queue import GC_PAUSE_BATCH

pytestmark = pytest.mark.integration


_BATCH_FRAMES = {"_prepare_all", "_send"}


def _in_a_batch() -> bool:
    """Whether ``Queue._prepare_all`` or ``Queue._send`` is on this thread's stack."""
    frame = sys._getframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name in _BATCH_FRAMES and code.co_filename.endswith("queue.py"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """Generations of the automatic collections that run inside a batch's preparation
    or send (the one that runs once the collector is on again is not one of them)."""
    seen: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and _in_a_batch():
            seen.append(info["generation"])

    was_enabled = gc.isenabled()
    saved = gc.get_threshold()
    gc.enable()
    gc.set_threshold(50, 10, 10)  # collect often, so a batch would see collections
    gc.callbacks.append(count)
    yield seen
    gc.callbacks.remove(count)
    gc.set_threshold(*saved)
    if not was_enabled:
        gc.disable()


def test_a_large_batch_runs_without_collections_and_leaves_the_collector_on(
    uno_home: Path, queue_name: str, collections: list[int]
) -> None:
    queue = Queue(queue_name, broker_url="embedded://")
    try:
        queue.enqueue_sync("bench.noop")  # connect outside the counted part
        specs = [JobSpec("bench.noop") for _ in range(GC_PAUSE_BATCH)]
        collections.clear()
        handles = queue.enqueue_many_sync(specs)
        assert collections == [] and len(handles) == GC_PAUSE_BATCH
        assert gc.isenabled()

        assert len(asyncio.run(queue.enqueue_many(specs))) == GC_PAUSE_BATCH
        assert collections == [] and gc.isenabled()
        # A small batch is left alone: collections run as the thresholds say.
        queue.enqueue_many_sync(specs[: GC_PAUSE_BATCH // 4])
        assert collections != []
        assert queue.size_sync() == 1 + GC_PAUSE_BATCH * 2 + GC_PAUSE_BATCH // 4
    finally:
        asyncio.run(queue.delete())
        queue.close()


def test_a_collector_the_application_turned_off_stays_off(
    uno_home: Path, queue_name: str, collections: list[int]
) -> None:
    queue = Queue(queue_name, broker_url="embedded://")
    gc.disable()
    try:
        queue.enqueue_many_sync(JobSpec("bench.noop") for _ in range(GC_PAUSE_BATCH))
        assert not gc.isenabled()
    finally:
        gc.enable()
        asyncio.run(queue.delete())
        queue.close()


def test_an_async_batch_stays_uncollected_from_its_preparation_to_its_return(
    uno_home: Path, queue_name: str
) -> None:
    """``enqueue_many`` keeps the collector off between preparing and sending too: turned
    on in between, it walked the whole prepared batch before the send (in the event
    loop's thread, handing the batch to its worker thread). Watched: from the start of
    the preparation to the end of the send."""
    queue = Queue(queue_name, broker_url="embedded://")
    seen: list[int] = []
    inside = False

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and inside:
            seen.append(info["generation"])

    prepare_all, send = queue._prepare_all, queue._send

    def prepare_and_mark(jobs: Any) -> Any:
        nonlocal inside
        inside = True
        return prepare_all(jobs)

    def send_and_mark(prepared: Any) -> Any:
        nonlocal inside
        try:
            return send(prepared)
        finally:
            inside = False

    async def enqueue(specs: list[JobSpec]) -> int:
        return len(await queue.enqueue_many(specs))

    saved = gc.get_threshold()
    was_enabled = gc.isenabled()
    gc.enable()
    gc.set_threshold(50, 10, 10)
    gc.callbacks.append(count)
    try:
        queue.enqueue_sync("bench.noop")  # connect outside the counted part
        queue._prepare_all = prepare_and_mark  # type: ignore[method-assign]
        queue._send = send_and_mark  # type: ignore[method-assign]
        specs = [JobSpec("bench.noop") for _ in range(GC_PAUSE_BATCH)]
        assert asyncio.run(enqueue(specs)) == GC_PAUSE_BATCH
        assert seen == [] and gc.isenabled()
        # A small batch is left alone, and the window is watched: collections run in it.
        assert asyncio.run(enqueue(specs[: GC_PAUSE_BATCH // 4])) == GC_PAUSE_BATCH // 4
        assert seen != []
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*saved)
        if not was_enabled:
            gc.disable()
        asyncio.run(queue.delete())
        queue.close()
