"""Shared fixtures. Integration fixtures use the real brokers on this machine.

Every test gets its own queue name (random suffix) and, on Redis, its own key prefix; both
are deleted afterwards, so a killed run leaves nothing that poisons the next.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from uno_jobs import Queue
from uno_jobs.worker import BaseWorker

REDIS_HOST = os.environ.get("UNO_TEST_REDIS", "127.0.0.1:6379")
AMQP_URL = os.environ.get("UNO_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_DB = 3


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)


@pytest.fixture
def uno_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "uno_home"
    monkeypatch.setenv("UNO_JOBS_HOME", str(home))
    monkeypatch.delenv("UNO_JOBS_BROKER_URL", raising=False)
    monkeypatch.delenv("UNO_JOBS_STORE_URL", raising=False)
    return home


@pytest.fixture
def queue_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def delete_redis_prefix(prefix: str) -> None:
    """Delete every key of the test Redis database that starts with ``prefix``."""
    import redis

    host, port = REDIS_HOST.split(":")
    client = redis.Redis(host=host, port=int(port), db=REDIS_DB)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def make_broker_url(
    kind: str, *, visibility_timeout: float = 3.0
) -> tuple[str, Callable[[], None]]:
    """A broker URL of ``kind`` isolated for one test, and its clean-up."""
    if kind == "embedded":
        return f"embedded://?visibility_timeout={visibility_timeout}", lambda: None
    if kind == "redis":
        prefix = f"uno-test-{uuid.uuid4().hex[:10]}:"
        url = (
            f"redis://{REDIS_HOST}/{REDIS_DB}?key_prefix={prefix}"
            f"&visibility_timeout={visibility_timeout}"
        )
        return url, lambda: delete_redis_prefix(prefix)
    if kind == "amqp":
        return AMQP_URL, lambda: None
    if kind == "sqs":
        # Delays and the job store: SQS deployments use Redis (DESIGN.md §5).
        prefix = f"uno-test-{uuid.uuid4().hex[:10]}:"
        os.environ["UNO_JOBS_STORE_URL"] = f"redis://{REDIS_HOST}/{REDIS_DB}?key_prefix={prefix}"
        url = (
            f"sqs://testing:testing@{sqs_endpoint()}?visibility_timeout={visibility_timeout:g}"
            "&polling_interval=0.05&wait_time_seconds=0"
        )

        def cleanup() -> None:
            os.environ.pop("UNO_JOBS_STORE_URL", None)
            delete_redis_prefix(prefix)

        return url, cleanup
    raise ValueError(kind)


_SQS_SERVER: Any = None


def sqs_endpoint() -> str:
    """``host:port`` of moto's SQS server, started on first use for the whole run.

    kombu's SQS transport takes its endpoint from the broker URL's host and port (with
    ``is_secure`` off); credentials and region are moto's placeholders.
    """
    global _SQS_SERVER
    if _SQS_SERVER is None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        _SQS_SERVER = server
    host, port = _SQS_SERVER.get_host_and_port()
    return f"{host}:{port}"


def sqs_client() -> Any:
    """A boto3 SQS client of moto's server (to look at queues as SQS sees them)."""
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=f"http://{sqs_endpoint()}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def sqs_delayed(queue_name: str) -> int:
    """Messages SQS holds back (``DelaySeconds``) over the level queues of ``queue_name``
    (kombu names them with ``-`` for ``.``)."""
    client = sqs_client()
    total = 0
    for suffix in ("", "-critical", "-high", "-low"):
        try:
            url = client.get_queue_url(QueueName=f"{queue_name}{suffix}")["QueueUrl"]
        except client.exceptions.QueueDoesNotExist:
            continue
        reply = client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
        )
        total += int(reply["Attributes"]["ApproximateNumberOfMessagesDelayed"])
    return total


@pytest.fixture(params=["embedded", "redis", "amqp", "sqs"])
def broker_url(request: pytest.FixtureRequest, uno_home: Path) -> Iterator[str]:
    url, cleanup = make_broker_url(request.param)
    try:
        yield url
    finally:
        cleanup()


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    """Run a test's ``async def main()`` to completion."""
    asyncio.run(coro_fn())  # type: ignore[arg-type]


@asynccontextmanager
async def opened(
    queue_name: str, broker_url: str, store_url: str | None = None, **options: Any
) -> AsyncIterator[Queue]:
    """A ``Queue`` whose broker queues are deleted afterwards."""
    queue = Queue(queue_name, broker_url=broker_url, store_url=store_url, **options)
    try:
        yield queue
    finally:
        await queue.delete()
        queue.close()


@asynccontextmanager
async def running(worker: BaseWorker, graceful: bool = False) -> AsyncIterator[BaseWorker]:
    """A started worker, shut down afterwards (at once unless ``graceful``)."""
    await worker.start()
    try:
        yield worker
    finally:
        await worker.shutdown(wait=graceful)
