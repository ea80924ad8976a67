"""uno_jobs outcomes in Celery's Redis result-backend format (``celery_results_url``).

A Celery application whose ``result_backend`` is the same Redis gets uno_jobs results
with ``AsyncResult(job_id).get()``: the value of a succeeded job, the error of a failed
one raised as Celery raises a task's exception.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import interop_tasks  # noqa: F401 - registers the interop.* tasks
import pytest
import redis
from conftest import REDIS_DB, REDIS_HOST, delete_redis_prefix, run, running

from uno_jobs import Queue
from uno_jobs.errors import ConfigurationError
from uno_jobs.worker import SyncWorker, ThreadPoolWorker

celery = pytest.importorskip("celery")

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(uno_home: Path) -> Iterator[str]:
    value = f"uno-results-{uuid.uuid4().hex[:10]}:"
    yield value
    delete_redis_prefix(value)


@pytest.fixture
def celery_app(prefix: str) -> Iterator[Any]:
    app = celery.Celery("results", set_as_current=False, broker="memory://")
    app.conf.result_backend = f"redis://{REDIS_HOST}/{REDIS_DB}"
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    app.conf.result_serializer = "json"
    app.conf.accept_content = ["json"]
    yield app
    app.close()


def _urls(prefix: str) -> tuple[str, str]:
    broker = f"redis://{REDIS_HOST}/{REDIS_DB}?key_prefix={prefix}"
    results = f"redis://{REDIS_HOST}/{REDIS_DB}?key_prefix={prefix}"
    return broker, results


def test_celery_async_result_gets_uno_results(
    prefix: str, celery_app: Any, queue_name: str
) -> None:
    broker_url, results_url = _urls(prefix)

    async def main() -> None:
        queue = Queue(queue_name, broker_url=broker_url)
        worker = ThreadPoolWorker(
            queue_name=queue_name,
            broker_url=broker_url,
            max_threads=2,
            celery_results_url=results_url,
        )
        try:
            async with running(worker):
                # Waiting before the job ran (pub/sub), and after it finished (stored key).
                job = await queue.enqueue("interop.echo", [1, "two"], {"k": {"n": 3}})
                waited = await asyncio.to_thread(celery_app.AsyncResult(job.id).get, timeout=20)
                failing = await queue.enqueue("interop.fail", ["boom"])
                with pytest.raises(ValueError, match="boom") as info:
                    await asyncio.to_thread(celery_app.AsyncResult(failing.id).get, timeout=20)
            assert waited == {"args": [1, "two"], "kwargs": {"k": {"n": 3}}}
            assert celery_app.AsyncResult(job.id).get(timeout=5) == waited
            assert celery_app.AsyncResult(job.id).state == "SUCCESS"
            assert type(info.value) is ValueError
            failed = celery_app.AsyncResult(failing.id)
            assert failed.state == "FAILURE"
            assert "ValueError: boom" in (failed.traceback or "")
            # interop.fail has 2 retries: attempts 1 and 2 were RETRY states first.
            assert (await queue.get_job(failing.id)).attempts == 3
        finally:
            await queue.delete()
            queue.close()

    run(main)


def test_dead_job_is_a_celery_failure_naming_the_reason(
    prefix: str, celery_app: Any, queue_name: str
) -> None:
    broker_url, results_url = _urls(prefix)

    async def main() -> None:
        queue = Queue(queue_name, broker_url=broker_url)
        worker = SyncWorker(
            queue_name=queue_name, broker_url=broker_url, celery_results_url=results_url
        )
        try:
            async with running(worker):
                job = await queue.enqueue("no_such_task", [1])
                result = celery_app.AsyncResult(job.id)
                with pytest.raises(Exception, match="unknown_task") as info:
                    await asyncio.to_thread(result.get, timeout=20)
            assert type(info.value).__name__ == "JobDeadLettered"
            assert result.state == "FAILURE"
        finally:
            await queue.delete()
            queue.close()

    run(main)


def test_result_document_is_celerys_and_expires(prefix: str, queue_name: str) -> None:
    broker_url, results_url = _urls(prefix)

    async def main() -> None:
        queue = Queue(queue_name, broker_url=broker_url)
        worker = SyncWorker(
            queue_name=queue_name,
            broker_url=broker_url,
            celery_results_url=results_url + "&expires=600",
        )
        try:
            async with running(worker):
                job = await queue.enqueue("interop.echo", ["x"])
                await job.wait(timeout=20)
                await worker.shutdown()  # the recorder has written everything
        finally:
            await queue.delete()
            queue.close()
        host, port = REDIS_HOST.split(":")
        client = redis.Redis(host=host, port=int(port), db=REDIS_DB)
        try:
            key = f"{prefix}celery-task-meta-{job.id}"
            doc = json.loads(client.get(key) or b"null")
            ttl = client.ttl(key)
        finally:
            client.close()
        assert set(doc) == {"status", "result", "traceback", "children", "date_done", "task_id"}
        assert (doc["status"], doc["task_id"], doc["children"]) == ("SUCCESS", job.id, [])
        assert doc["result"] == {"args": ["x"], "kwargs": {}}
        assert 0 < ttl <= 600

    run(main)


def test_bad_results_url_is_refused_naming_the_option() -> None:
    with pytest.raises(ConfigurationError, match="celery_results_url"):
        SyncWorker(queue_name="q", celery_results_url="amqp://localhost")
    with pytest.raises(ConfigurationError, match=r"unknown option.*global_keyprefix"):
        SyncWorker(queue_name="q", celery_results_url="redis://localhost/0?global_keyprefix=x")
