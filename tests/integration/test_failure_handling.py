"""Retries, final failures and middleware signals on every broker (and, where the executor
matters, every worker type): ``Retry(delay=)``, ``retry_on`` / ``dont_retry_on``, time
limits, the dead letter of a job that failed for good, the attempt history, and a delayed
retry that outlives every worker.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import failure_tasks  # noqa: F401 - registers the failure.* tasks
import pytest
from conftest import async_wait_until, sqs_delayed
from conftest import opened as shared_opened
from conftest import running as shared_running
from kombu import Queue as BrokerQueue

from uno_jobs import JobFailedError, JobStatus, Queue, Retry, SkipJob
from uno_jobs.broker import dead_queue_name
from uno_jobs.broker._spec import parse_broker_url
from uno_jobs.cli import main as cli_main
from uno_jobs.middleware import Middleware
from uno_jobs.worker import BaseWorker
from uno_jobs.worker._registry import get_worker_type

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sync", "thread", "async", "process"])
def worker_type(request: pytest.FixtureRequest) -> type[BaseWorker]:
    return get_worker_type(request.param)


def store_url_for(broker_url: str) -> str | None:
    """On Redis, the store under the test's own key prefix (deleted with the broker's keys)."""
    parts = urlsplit(broker_url)
    if parts.scheme != "redis":
        return None
    prefix = dict(parse_qsl(parts.query))["key_prefix"]
    return f"redis://{parts.netloc}{parts.path}?key_prefix={prefix}"


def make_worker(cls: type[BaseWorker], queue: Queue, **options: Any) -> BaseWorker:
    return cls(
        queue_name=queue.name,
        broker_url=queue.broker_url,
        store_url=store_url_for(queue.broker_url),
        poll_interval=0.1,
        **options,
    )


def opened(queue_name: str, broker_url: str) -> AbstractAsyncContextManager[Queue]:
    return shared_opened(queue_name, broker_url, store_url_for(broker_url))


def running(worker: BaseWorker) -> AbstractAsyncContextManager[BaseWorker]:
    return shared_running(worker, graceful=True)


def runs(folder: Path, name: str) -> list[float]:
    """Start times of the runs of ``name``, in order."""
    return sorted(float(p.read_text()) for p in folder.glob(f"{name}.*"))


def take_dead_messages(queue: Queue) -> list[tuple[dict[str, Any], Any]]:
    """Take every message off ``<queue>.dead``: (headers, decoded body) of each."""
    conn = parse_broker_url(queue.broker_url).connection()
    try:
        dead = BrokerQueue(dead_queue_name(queue.name), no_declare=True)(conn.default_channel)
        taken = []
        while (message := dead.get(no_ack=True)) is not None:
            taken.append((dict(message.headers), json.loads(message.body)))
        return taken
    finally:
        conn.release()


def test_retry_signal_sets_the_delay_of_the_next_attempt(
    broker_url: str, worker_type: type[BaseWorker], queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            worker = make_worker(worker_type, queue)
            async with running(worker):
                later = await queue.enqueue("failure.retry_signal", [str(tmp_path), "r", 0.6])
                refused = await queue.enqueue("failure.retry_unbudgeted", [str(tmp_path), "u"])
                assert await later.wait(timeout=20) == 2, "the task's hour was overridden"
                with pytest.raises(JobFailedError, match=r"max_retries=0\) \(max_retries_exc"):
                    await refused.wait(timeout=20)
            first, second = runs(tmp_path, "r")
            assert second - first >= 0.6
            record = await queue.get_job(later.id)
            assert (record.status, record.attempts) == (JobStatus.SUCCEEDED, 2)
            [error] = record.errors
            assert (error.attempt, error.error_type) == (1, "Retry")
            assert error.error_message == "retry requested in 0.6 s: not yet"
            assert error.worker_id == worker.worker_id
            failed = await queue.get_job(refused.id)
            assert (failed.status, failed.dead_reason) == (JobStatus.FAILED, "max_retries_exceeded")
            assert len(runs(tmp_path, "u")) == 1

    asyncio.run(main())


def test_retry_on_and_dont_retry_on_pick_what_is_retried(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(make_worker(get_worker_type("async"), queue, max_concurrent=3)):
                jobs = {
                    kind: await queue.enqueue("failure.picky", [str(tmp_path), kind, kind])
                    for kind in ("reset", "refused", "value")
                }
                for job in jobs.values():
                    with pytest.raises(JobFailedError):
                        await job.wait(timeout=20)
            attempts = {kind: len(runs(tmp_path, kind)) for kind in jobs}
            assert attempts == {"reset": 3, "refused": 1, "value": 1}
            letters = {d.job_id: d for d in await queue.dead_letters()}
            details = {kind: letters[job.id].error for kind, job in jobs.items()}
            assert {d.reason for d in letters.values()} == {"max_retries_exceeded"}
            assert details == {
                "reset": "ConnectionResetError: reset on run 3 (not retried: no retries left "
                "(max_retries=2))",
                "refused": "ConnectionRefusedError: refused on run 1 (not retried: "
                "ConnectionRefusedError is in the task's dont_retry_on)",
                "value": "ValueError: value on run 1 (not retried: ValueError is not in the "
                "task's retry_on)",
            }

    asyncio.run(main())


def test_a_job_that_fails_for_good_is_failed_and_dead_lettered(
    broker_url: str, queue_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> str:
        async with opened(queue_name, broker_url) as queue:
            async with running(make_worker(get_worker_type("thread"), queue)) as worker:
                job = await queue.enqueue("failure.always", [str(tmp_path), "a"])
                with pytest.raises(JobFailedError, match="attempt 3 fails") as info:
                    await job.wait(timeout=20)
                assert info.value.status == "failed"
            record = await queue.get_job(job.id)
            assert (record.status, record.dead_reason) == (JobStatus.FAILED, "max_retries_exceeded")
            assert [(e.attempt, e.error_type, e.error_message) for e in record.errors] == [
                (n, "ValueError", f"attempt {n} fails") for n in (1, 2, 3)
            ]
            assert {e.worker_id for e in record.errors} == {worker.worker_id}
            [letter] = await queue.dead_letters()
            assert (letter.job_id, letter.reason) == (job.id, "max_retries_exceeded")
            [(headers, body)] = take_dead_messages(queue)
            assert headers["id"] == job.id and headers["retries"] == 2, "the last attempt's copy"
            assert headers["uno_dead_reason"] == "max_retries_exceeded"
            assert headers["uno_dead_error"].startswith("ValueError: attempt 3 fails")
            assert body[0] == [str(tmp_path), "a"]
            return job.id

    job_id = asyncio.run(main())
    capsys.readouterr()
    store = store_url_for(broker_url)
    argv = ["job", job_id, "--queue", queue_name, "--broker", broker_url]
    assert cli_main(argv + (["--store", store] if store else [])) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["error_message"] for e in shown["errors"]] == [
        f"attempt {n} fails" for n in (1, 2, 3)
    ]


def test_time_limits_are_retried_then_dead_lettered_as_timeout(
    broker_url: str, worker_type: type[BaseWorker], queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(make_worker(worker_type, queue)):
                job = await queue.enqueue("failure.spin", [str(tmp_path), "s"])
                with pytest.raises(JobFailedError, match=r"time limit of 0\.5 s"):
                    await job.wait(timeout=30)
            assert len(runs(tmp_path, "s")) == 2, "max_retries=1: the timeout was retried"
            assert not (tmp_path / "finished-s").exists()
            record = await queue.get_job(job.id)
            assert (record.status, record.dead_reason) == (JobStatus.FAILED, "timeout")
            assert [e.error_type for e in record.errors] == ["JobTimeLimitExceeded"] * 2
            assert [(d.job_id, d.reason) for d in await queue.dead_letters()] == [
                (job.id, "timeout")
            ]
            [(headers, _)] = take_dead_messages(queue)
            assert headers["uno_dead_reason"] == "timeout"

    asyncio.run(main())


def test_a_delayed_retry_outlives_every_worker_and_runs_once(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    """``retry_delay=5``: the first run fails, every worker stops, a new worker starts
    after the delay, and the job runs exactly once more. The retry waits in the store's
    schedule, or on SQS in SQS itself (DelaySeconds)."""
    in_sqs = broker_url.startswith("sqs://")

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(make_worker(get_worker_type("async"), queue)):
                job = await queue.enqueue("failure.once_later", [str(tmp_path), "o"])
                await async_wait_until(
                    lambda: queue.get_job_sync(job.id).status == JobStatus.SCHEDULED, timeout=15
                )
            record = await queue.get_job(job.id)
            due = record.errors[0].failed_at + 5
            assert len(runs(tmp_path, "o")) == 1
            assert queue.store.scheduled_count() == (0 if in_sqs else 1)
            assert await queue.size() == 0
            if in_sqs:
                assert sqs_delayed(queue.name) == 1
            await async_wait_until(lambda: time.time() > due, timeout=10)
            async with running(make_worker(get_worker_type("async"), queue)):
                assert await job.wait(timeout=15) == 2
            assert runs(tmp_path, "o")[1] >= due, "the retry did not run before its time"
            assert queue.store.scheduled_count() == 0 and await queue.size() == 0
            record = await queue.get_job(job.id)
            assert (record.status, record.attempts) == (JobStatus.SUCCEEDED, 2)

    asyncio.run(main())


class Skipper(Middleware):
    """Skips the jobs whose run name starts with ``skip``; counts ``on_error`` calls."""

    def __init__(self) -> None:
        self.on_error_calls = 0

    async def before_execution(self, job: Any, task_func: Any) -> None:
        if job["args"][1].startswith("skip"):
            raise SkipJob("maintenance window")

    async def on_error(self, job: Any, task_func: Any, exception: BaseException) -> None:
        self.on_error_calls += 1


def test_skip_job_from_middleware_ends_the_job_cancelled(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    skipper = Skipper()

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            worker = make_worker(get_worker_type("async"), queue, middleware=[skipper])
            async with running(worker):
                skipped = await queue.enqueue("failure.count", [str(tmp_path), "skip-me"])
                kept = await queue.enqueue("failure.count", [str(tmp_path), "keep"])
                assert await kept.wait(timeout=20) == 1
                with pytest.raises(JobFailedError) as info:
                    await skipped.wait(timeout=20)
                assert info.value.status == "dead"
            assert runs(tmp_path, "skip-me") == [], "the task never ran"
            assert skipper.on_error_calls == 0
            record = await queue.get_job(skipped.id)
            assert (record.status, record.dead_reason) == (JobStatus.DEAD, "cancelled")
            detail = "skipped by middleware Skipper: maintenance window"
            assert record.error_message == detail
            letters = [(d.job_id, d.reason, d.error) for d in await queue.dead_letters()]
            assert letters == [(skipped.id, "cancelled", detail)]
            [(headers, _)] = take_dead_messages(queue)
            assert (headers["uno_dead_reason"], headers["uno_dead_error"]) == ("cancelled", detail)

    asyncio.run(main())


class RetryAsker(Middleware):
    """On a job's first attempt, asks for a retry before or after it runs (by run name)."""

    async def before_execution(self, job: Any, task_func: Any) -> None:
        if job["args"][1] == "before" and job["attempt"] == 1:
            raise Retry(delay=0, reason="asked before")

    def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
        if job["args"][1] == "after" and job["attempt"] == 1:
            raise Retry(delay=0, reason="asked after")
        return result


def test_middleware_can_ask_for_a_retry(broker_url: str, queue_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            worker = make_worker(get_worker_type("async"), queue, middleware=[RetryAsker()])
            async with running(worker):
                before = await queue.enqueue("failure.count_retried", [str(tmp_path), "before"])
                after = await queue.enqueue("failure.count_retried", [str(tmp_path), "after"])
                assert await before.wait(timeout=20) == 1, "the task ran on attempt 2 only"
                assert await after.wait(timeout=20) == 2, "attempt 1's result was dropped"
            for job, reason in ((before, "asked before"), (after, "asked after")):
                record = await queue.get_job(job.id)
                assert (record.status, record.attempts) == (JobStatus.SUCCEEDED, 2)
                assert [(e.error_type, e.error_message) for e in record.errors] == [
                    ("Retry", f"retry requested in 0 s: {reason}")
                ]

    asyncio.run(main())


class Trace(Middleware):
    """Records hook calls; raises from the hooks it is told to."""

    def __init__(self, name: str, events: list[str], fail: tuple[str, ...] = ()) -> None:
        self.name, self.events, self.fail = name, events, fail

    async def before_execution(self, job: Any, task_func: Any) -> None:
        self.events.append(f"before {self.name} {job['args'][1]}")
        if job["args"][1] in self.fail:
            raise PermissionError(f"{self.name} says no")

    async def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
        self.events.append(f"after {self.name} {job['args'][1]}")
        if self.fail:
            raise RuntimeError(f"{self.name}.after is broken")
        return result

    async def on_error(self, job: Any, task_func: Any, exception: BaseException) -> None:
        self.events.append(f"on_error {self.name} {job['args'][1]}")
        raise RuntimeError(f"{self.name}.on_error is broken")


class Gatekeeper(Trace):
    """A class name of its own: errors name the middleware by its class."""


def test_middleware_rules_hold_in_every_worker_type(
    worker_type: type[BaseWorker], uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    """Before-hooks in order, after-hooks and on_error in reverse; a raising
    ``before_execution`` fails the job naming the middleware; a raising
    ``after_execution`` or ``on_error`` is logged and the outcome stands."""
    events: list[str] = []
    chain = [Trace("A", events), Gatekeeper("B", events, fail=("gated",)), Trace("C", events)]

    async def main() -> None:
        async with opened(queue_name, "embedded://") as queue:
            async with running(make_worker(worker_type, queue, middleware=chain)):
                ok = await queue.enqueue("failure.count", [str(tmp_path), "ok"])
                assert await ok.wait(timeout=30) == 1, "B's broken after_execution is ignored"
                gated = await queue.enqueue("failure.count", [str(tmp_path), "gated"])
                with pytest.raises(JobFailedError, match=r"Gatekeeper\.before_execution raised"):
                    await gated.wait(timeout=30)
            record = await queue.get_job(gated.id)
            assert (record.status, record.error_type) == (JobStatus.FAILED, "MiddlewareError")
            assert record.dead_reason == "max_retries_exceeded"
            assert runs(tmp_path, "gated") == []

    asyncio.run(main())
    assert events == [
        "before A ok",
        "before B ok",
        "before C ok",
        "after C ok",
        "after B ok",
        "after A ok",
        "before A gated",
        "before B gated",
        "on_error C gated",
        "on_error B gated",
        "on_error A gated",
    ]
