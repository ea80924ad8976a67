"""Celery and uno_jobs on the same live queues (DESIGN.md §2, "Wire format").

Celery → uno_jobs: real Celery's ``send_task`` publishes to RabbitMQ and Redis, and an
uno_jobs worker of every type runs the job with Celery's args, kwargs, ``retries`` count,
``eta`` and ``expires``. Celery declares the queue itself before publishing, so these
tests also prove uno_jobs declares it identically (RabbitMQ refuses a second, different
declaration with PRECONDITION_FAILED).

uno_jobs → Celery: jobs enqueued by uno_jobs run on a real ``celery worker`` (solo pool,
a subprocess running ``celery_side``), which records what its request held; its log must
show the job received and succeeded, and no warning or error.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import interop_tasks  # noqa: F401 - registers the interop.* tasks
import pytest
from conftest import (
    AMQP_URL,
    REDIS_DB,
    REDIS_HOST,
    delete_redis_prefix,
    run,
    running,
    wait_until,
)

from uno_jobs import JobStatus, Queue
from uno_jobs.errors import JobNotFoundError
from uno_jobs.worker import BaseWorker
from uno_jobs.worker._registry import get_worker_type

celery = pytest.importorskip("celery")

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


class Brokers:
    """One broker seen by both sides: uno_jobs' URL and the matching Celery settings."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "redis":
            self.prefix = f"uno-celery-{uuid.uuid4().hex[:10]}:"
            self.uno_url = f"redis://{REDIS_HOST}/{REDIS_DB}?key_prefix={self.prefix}"
            self.celery_url = f"redis://{REDIS_HOST}/{REDIS_DB}"
            self.transport_options: dict[str, Any] = {"global_keyprefix": self.prefix}
        else:
            self.prefix = ""
            self.uno_url = AMQP_URL
            self.celery_url = AMQP_URL
            self.transport_options = {}

    def celery_app(self) -> Any:
        app = celery.Celery("interop", set_as_current=False, broker=self.celery_url)
        app.conf.broker_transport_options = self.transport_options
        app.conf.broker_connection_retry_on_startup = False
        app.conf.task_serializer = "json"
        return app

    def cleanup(self) -> None:
        if self.kind == "redis":
            delete_redis_prefix(self.prefix)


@pytest.fixture(params=["redis", "amqp"])
def brokers(request: pytest.FixtureRequest, uno_home: Any) -> Iterator[Brokers]:
    b = Brokers(request.param)
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture
def celery_app(brokers: Brokers) -> Iterator[Any]:
    app = brokers.celery_app()
    yield app
    app.close()


@pytest.fixture(params=["sync", "thread", "async", "process"])
def worker_type(request: pytest.FixtureRequest) -> type[BaseWorker]:
    return get_worker_type(request.param)


def _worker(cls: type[BaseWorker], queue: Queue, **options: Any) -> BaseWorker:
    if cls.options_model.concurrency_option:
        options[cls.options_model.concurrency_option] = 2
    return cls(queue_name=queue.name, broker_url=queue.broker_url, **options)


async def _finished(queue: Queue, job_id: str, timeout: float = 20.0) -> Any:
    """The record of ``job_id`` once it is finished (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            record = await queue.get_job(job_id)
        except JobNotFoundError:  # a Celery job has a record once a worker took it
            record = None
        if record is not None and record.finished:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not finished within {timeout} s: {record}")
        await asyncio.sleep(0.05)


def test_send_task_runs_on_every_worker_type(
    brokers: Brokers, celery_app: Any, worker_type: type[BaseWorker], queue_name: str
) -> None:
    async def main() -> None:
        queue = Queue(queue_name, broker_url=brokers.uno_url)
        try:
            sent = celery_app.send_task(
                "interop.echo",
                args=[1, "two", {"three": [3]}],
                kwargs={"k": "v", "n": None},
                queue=queue_name,
            )
            async with running(_worker(worker_type, queue)):
                record = await _finished(queue, sent.id)
            assert record.status == JobStatus.SUCCEEDED, record
            assert record.result == {
                "args": [1, "two", {"three": [3]}],
                "kwargs": {"k": "v", "n": None},
            }
            assert record.task == "interop.echo" and record.attempts == 1
        finally:
            await queue.delete()
            queue.close()

    run(main)


def test_retries_count_from_celery_counts_against_max_retries(
    brokers: Brokers, celery_app: Any, queue_name: str
) -> None:
    """``interop.fail`` allows 2 retries; Celery says this delivery is already retry 1."""

    async def main() -> None:
        queue = Queue(queue_name, broker_url=brokers.uno_url)
        try:
            async with running(_worker(get_worker_type("thread"), queue)):
                sent = celery_app.send_task(
                    "interop.fail", args=["boom"], queue=queue_name, retries=1
                )
                record = await _finished(queue, sent.id)
            assert record.status == JobStatus.FAILED, record
            # Attempt 2 (Celery's retries=1) and attempt 3 ran here; then no retries left.
            assert record.attempts == 3
            assert [e.attempt for e in record.errors] == [2, 3]
            assert record.dead_reason == "max_retries_exceeded"
        finally:
            await queue.delete()
            queue.close()

    run(main)


def test_expires_from_celery_is_honoured(
    brokers: Brokers, celery_app: Any, queue_name: str
) -> None:
    async def main() -> None:
        queue = Queue(queue_name, broker_url=brokers.uno_url)
        try:
            # Celery turns a past ``expires`` into an AMQP TTL of 0: RabbitMQ drops the
            # message unless a consumer is there, so the worker is.
            async with running(_worker(get_worker_type("sync"), queue)):
                past = datetime.now(timezone.utc) - timedelta(seconds=5)
                expired = celery_app.send_task("interop.echo", [1], queue=queue_name, expires=past)
                fresh = celery_app.send_task("interop.echo", [2], queue=queue_name, expires=300)
                dead = await _finished(queue, expired.id)
                done = await _finished(queue, fresh.id)
            assert (dead.status, dead.dead_reason) == (JobStatus.DEAD, "expired")
            assert done.status == JobStatus.SUCCEEDED and done.result["args"] == [2]
        finally:
            await queue.delete()
            queue.close()

    run(main)


@pytest.mark.parametrize("kind", ["countdown", "eta"])
def test_eta_from_celery_is_honoured_without_holding_the_message(
    brokers: Brokers, celery_app: Any, queue_name: str, kind: str
) -> None:
    """The job waits in the store's schedule (status ``scheduled``), not unacked in the
    worker, and starts no earlier than Celery's eta."""

    async def main() -> None:
        queue = Queue(queue_name, broker_url=brokers.uno_url)
        try:
            async with running(_worker(get_worker_type("async"), queue)) as worker:
                eta = datetime.now(timezone.utc) + timedelta(seconds=3)
                when: dict[str, Any] = {"countdown": 3} if kind == "countdown" else {"eta": eta}
                sent = celery_app.send_task("interop.echo", ["later"], queue=queue_name, **when)

                async def scheduled() -> bool:
                    try:
                        record = await queue.get_job(sent.id)
                    except JobNotFoundError:
                        return False
                    return record.status == JobStatus.SCHEDULED

                deadline = time.monotonic() + 10
                while not await scheduled():
                    assert time.monotonic() < deadline, "never scheduled"
                    await asyncio.sleep(0.05)
                # The message is acked once the schedule has it, well before the eta.
                while worker.in_flight:
                    assert time.monotonic() < deadline, "the message is still held"
                    await asyncio.sleep(0.02)
                assert time.time() < eta.timestamp()
                record = await _finished(queue, sent.id)
            assert record.status == JobStatus.SUCCEEDED and record.result["args"] == ["later"]
            assert record.started_at >= eta.timestamp() - 0.1
        finally:
            await queue.delete()
            queue.close()

    run(main)


# --- uno_jobs → Celery ---------------------------------------------------------------


class CeleryWorker:
    """A real ``celery worker`` (solo pool) on one queue, as a subprocess."""

    def __init__(self, brokers: Brokers, queue_name: str, folder: Path, backend: str = "") -> None:
        self.out = folder / "runs"
        self.out.mkdir()
        self.log = folder / "celery.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "CELERY_SIDE_BROKER": brokers.celery_url,
            "CELERY_SIDE_PREFIX": brokers.prefix,
            "CELERY_SIDE_OUT": str(self.out),
            "CELERY_SIDE_BACKEND": backend,
        }
        command = [
            sys.executable, "-m", "celery", "-A", "celery_side", "worker", "-P", "solo",
            "-Q", queue_name, "-n", f"interop-{queue_name}@%h", "-l", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            command, cwd=HERE, env=env, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        wait_until(lambda: "ready." in self.text() or self.process.poll() is not None, 60)
        assert self.process.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def seen(self, job_id: str) -> dict[str, Any]:
        """What the Celery task's request held for ``job_id``, once it ran."""
        path = self.out / f"{job_id}.json"
        wait_until(path.exists, 30)
        wait_until(lambda: f"{job_id}] succeeded" in self.text(), 10)
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def stop(self) -> None:
        if self.process.poll() is None:
            # Killed: the tests checked what they needed, and on RabbitMQ, with its queue
            # deleted under it, the worker took 10 s to stop after SIGTERM or SIGQUIT.
            self.process.kill()
            self.process.wait(10)
        self._log_file.close()


@pytest.fixture
def celery_worker(brokers: Brokers, queue_name: str, tmp_path: Path) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(brokers, queue_name, tmp_path)
    try:
        yield worker
    finally:
        worker.stop()
        # A Celery worker declares its queue again when the test deletes it under it:
        # delete it once more now that the worker is gone, so nothing is left behind.
        queue = Queue(queue_name, broker_url=brokers.uno_url)
        try:
            asyncio.run(queue.delete())
        finally:
            queue.close()


def _problems(log_text: str) -> list[str]:
    """Warning and error lines of a Celery worker log (Celery's own format)."""
    return [line for line in log_text.splitlines() if "WARNING/" in line or "ERROR/" in line]


def test_uno_job_runs_on_a_celery_worker(
    brokers: Brokers, celery_worker: CeleryWorker, queue_name: str
) -> None:
    async def main() -> None:
        queue = Queue(queue_name, broker_url=brokers.uno_url)
        try:
            job = await queue.enqueue(
                "interop.echo",
                [1, "two", {"three": [3]}],
                {"k": "v", "n": None},
                job_id=f"uno-{uuid.uuid4().hex}",
                expires=300,
            )
            seen = celery_worker.seen(job.id)
            # Read before the queue is deleted under the Celery worker (which it logs).
            log_text = celery_worker.text()
        finally:
            await queue.delete()
            queue.close()
        assert seen["task"] == "interop.echo" and seen["id"] == job.id
        assert seen["args"] == [1, "two", {"three": [3]}]
        assert seen["kwargs"] == {"k": "v", "n": None}
        assert seen["retries"] == 0
        assert (seen["root_id"], seen["parent_id"], seen["group"]) == (job.id, None, None)
        assert seen["eta"] is None
        expires = datetime.fromisoformat(seen["expires"])
        assert (
            datetime.now(timezone.utc)
            < expires
            < datetime.now(timezone.utc) + timedelta(seconds=301)
        )
        assert seen["origin"].startswith(f"gen{os.getpid()}@")
        assert seen["argsrepr"] == "[1, 'two', {'three': [3]}]"
        assert seen["kwargsrepr"] == "{'k': 'v', 'n': None}"
        assert seen["ignore_result"] is False
        assert seen["correlation_id"] == job.id
        assert seen["delivery_routing_key"] == queue_name
        assert f"Task interop.echo[{job.id}] received" in log_text
        assert _problems(log_text) == []

    run(main)


def test_delayed_uno_job_runs_on_a_celery_worker_when_due(
    brokers: Brokers, celery_worker: CeleryWorker, queue_name: str
) -> None:
    """The delay waits in uno_jobs' store; an uno_jobs worker on any queue (here another
    one) publishes it when due, and Celery runs it with its eta passed."""

    async def main() -> None:
        queue = Queue(queue_name, broker_url=brokers.uno_url)
        other = Queue(f"{queue_name}-other", broker_url=brokers.uno_url)
        try:
            async with running(_worker(get_worker_type("sync"), other, poll_interval=0.2)):
                before = time.time()
                job = await queue.enqueue("interop.echo", ["later"], delay=2)
                seen = await asyncio.to_thread(celery_worker.seen, job.id)
                ran_at = time.time()
            log_text = celery_worker.text()
        finally:
            await queue.delete()
            await other.delete()
            queue.close()
            other.close()
        assert seen["args"] == ["later"]
        assert ran_at >= before + 2
        assert datetime.fromisoformat(seen["eta"]).timestamp() == pytest.approx(before + 2, abs=1)
        assert _problems(log_text) == []

    run(main)
