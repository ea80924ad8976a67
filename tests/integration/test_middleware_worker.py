"""Middleware inside a real worker on the embedded broker, for every worker type.

The hooks see the job as a read-only mapping, run in onion order, can replace the result,
and a raising hook does what the README promises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import contract_tasks  # noqa: F401 - registers the contract.* tasks
import pytest

from uno_jobs import JobFailedError, JobStatus, Queue
from uno_jobs.middleware import Middleware
from uno_jobs.worker import BaseWorker
from uno_jobs.worker._registry import get_worker_type

pytestmark = pytest.mark.integration

JOB_KEYS = {
    "id",
    "task",
    "args",
    "kwargs",
    "queue",
    "priority",
    "attempt",
    "enqueued_at",
    "headers",
    "worker_id",
}

Events = list[tuple[str, str, str]]


@pytest.fixture(params=["sync", "thread", "async"])
def worker_type(request: pytest.FixtureRequest) -> type[BaseWorker]:
    return get_worker_type(request.param)


@asynccontextmanager
async def worker_with(
    cls: type[BaseWorker], queue_name: str, middleware: list[Middleware]
) -> AsyncIterator[tuple[Queue, BaseWorker]]:
    """A queue on the embedded broker (UNO_JOBS_HOME from ``uno_home``) and a running worker."""
    queue = Queue(queue_name)
    worker = cls(queue_name=queue_name, middleware=middleware)
    try:
        await worker.start()
        try:
            yield queue, worker
        finally:
            await worker.shutdown()
    finally:
        await queue.delete()
        queue.close()


class AsyncRecorder(Middleware):
    """Records every hook call; ``async def`` overrides."""

    def __init__(self, name: str, events: Events) -> None:
        self.name = name
        self.events = events
        self.views: list[dict[str, Any]] = []
        self.read_only: list[bool] = []
        self.errors: list[BaseException] = []

    async def before_execution(self, job: Any, task_func: Any) -> None:
        self.events.append((job["id"], "before", self.name))
        self.views.append(dict(job))
        try:
            job["status"] = "tampered"
        except TypeError:
            self.read_only.append(True)
        else:
            self.read_only.append(False)
        await asyncio.sleep(0)

    async def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
        self.events.append((job["id"], "after", self.name))
        return result

    async def on_error(self, job: Any, task_func: Any, exception: BaseException) -> None:
        self.events.append((job["id"], "on_error", self.name))
        self.errors.append(exception)


class SyncRecorder(Middleware):
    """Records every hook call; plain ``def`` overrides."""

    def __init__(self, name: str, events: Events) -> None:
        self.name = name
        self.events = events

    def before_execution(self, job: Any, task_func: Any) -> None:  # type: ignore[override]
        self.events.append((job["id"], "before", self.name))

    def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
        self.events.append((job["id"], "after", self.name))
        return result

    def on_error(self, job: Any, task_func: Any, exception: BaseException) -> None:  # type: ignore[override]
        self.events.append((job["id"], "on_error", self.name))


def of(events: Events, job_id: str) -> list[tuple[str, str]]:
    return [(hook, name) for jid, hook, name in events if jid == job_id]


def test_hook_order_and_the_job_view(
    worker_type: type[BaseWorker], uno_home: Path, queue_name: str
) -> None:
    events: Events = []
    first, second = AsyncRecorder("A", events), SyncRecorder("B", events)

    async def main() -> None:
        async with worker_with(worker_type, queue_name, [first, second]) as (queue, worker):
            before_enqueue = time.time()
            ok = await queue.enqueue("contract.add", [2, 3])
            assert await ok.wait(timeout=15) == 5
            bad = await queue.enqueue("contract.fail", kwargs={"message": "it broke"})
            with pytest.raises(JobFailedError):
                await bad.wait(timeout=15)

            assert of(events, ok.id) == [
                ("before", "A"),
                ("before", "B"),
                ("after", "B"),
                ("after", "A"),
            ]
            assert of(events, bad.id) == [
                ("before", "A"),
                ("before", "B"),
                ("on_error", "B"),
                ("on_error", "A"),
            ]
            assert [type(e) for e in first.errors] == [ValueError]
            assert str(first.errors[0]) == "it broke"

            view = first.views[0]
            assert set(view) == JOB_KEYS
            assert view["id"] == ok.id
            assert view["task"] == "contract.add"
            assert list(view["args"]) == [2, 3]
            assert view["kwargs"] == {}
            assert view["queue"] == queue_name
            assert view["priority"] == "normal"
            assert view["attempt"] == 1
            assert isinstance(view["enqueued_at"], float)
            assert before_enqueue - 1 <= view["enqueued_at"] <= time.time()
            assert isinstance(view["headers"], dict)
            assert view["worker_id"] == worker.worker_id
            assert first.views[1]["kwargs"] == {"message": "it broke"}
            assert first.read_only == [True, True]

            failed = await queue.get_job(bad.id)
            assert (failed.error_type, failed.error_message) == ("ValueError", "it broke")

    asyncio.run(main())


def test_after_execution_changes_the_recorded_result(
    worker_type: type[BaseWorker], uno_home: Path, queue_name: str
) -> None:
    class Wrap(Middleware):
        async def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
            return {"wrapped": result, "task": job["task"]}

    class Times10(Middleware):
        def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
            return result * 10

    async def main() -> None:
        # Reverse order: Times10 (inner) sees the task's result, Wrap (outer) sees its.
        async with worker_with(worker_type, queue_name, [Wrap(), Times10()]) as (queue, _):
            job = await queue.enqueue("contract.async_add", [2, 3])
            assert await job.wait(timeout=15) == {"wrapped": 50, "task": "contract.async_add"}
            record = await queue.get_job(job.id)
            assert record.status == JobStatus.SUCCEEDED
            assert record.result == {"wrapped": 50, "task": "contract.async_add"}

    asyncio.run(main())


def test_raising_before_execution_fails_the_job_naming_the_middleware(
    worker_type: type[BaseWorker], uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    events: Events = []

    class Gatekeeper(Middleware):
        async def before_execution(self, job: Any, task_func: Any) -> None:
            raise PermissionError("jobs are closed today")

    async def main() -> None:
        recorder = SyncRecorder("R", events)
        async with worker_with(worker_type, queue_name, [Gatekeeper(), recorder]) as (queue, _):
            job = await queue.enqueue("contract.mark", [str(tmp_path), "never"])
            with pytest.raises(JobFailedError) as info:
                await job.wait(timeout=15)
            assert info.value.status == "failed"
            record = await queue.get_job(job.id)
            assert record.status == JobStatus.FAILED
            assert record.error_message is not None
            assert "Gatekeeper" in record.error_message
            assert "jobs are closed today" in record.error_message
            assert record.error_type == "MiddlewareError"
            assert not list(tmp_path.glob("never.*")), "the task did not run"
            assert ("before", "R") not in of(events, job.id), "later before-hooks did not run"
            assert ("after", "R") not in of(events, job.id)

    asyncio.run(main())


def test_raising_on_error_does_not_change_the_outcome(
    worker_type: type[BaseWorker],
    uno_home: Path,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: Events = []

    class Broken(Middleware):
        def on_error(self, job: Any, task_func: Any, exception: BaseException) -> None:  # type: ignore[override]
            raise RuntimeError("on_error is broken")

    async def main() -> None:
        # Reverse order for on_error: Broken runs first, the recorder after it.
        chain: list[Middleware] = [AsyncRecorder("A", events), Broken()]
        async with worker_with(worker_type, queue_name, chain) as (queue, _):
            job = await queue.enqueue("contract.fail", ["original error"])
            with pytest.raises(JobFailedError) as info:
                await job.wait(timeout=15)
            assert info.value.status == "failed"
            record = await queue.get_job(job.id)
            assert (record.error_type, record.error_message) == ("ValueError", "original error")
            assert of(events, job.id)[-1] == ("on_error", "A"), "the next hook still ran"

    with caplog.at_level(logging.ERROR, logger="uno_jobs.middleware"):
        asyncio.run(main())
    assert any("Broken.on_error raised" in r.getMessage() for r in caplog.records)


def test_raising_after_execution_keeps_the_result(
    worker_type: type[BaseWorker],
    uno_home: Path,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Middleware):
        async def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
            raise RuntimeError("after is broken")

    async def main() -> None:
        async with worker_with(worker_type, queue_name, [Broken()]) as (queue, _):
            job = await queue.enqueue("contract.add", [20, 22])
            assert await job.wait(timeout=15) == 42
            assert (await queue.get_job(job.id)).status == JobStatus.SUCCEEDED

    with caplog.at_level(logging.ERROR, logger="uno_jobs.middleware"):
        asyncio.run(main())
    assert any("Broken.after_execution raised" in r.getMessage() for r in caplog.records)
