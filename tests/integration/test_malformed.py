"""Bad input never stops a worker (issue 5, point 5), on every broker.

Malformed messages are published straight to the broker with kombu, bypassing ``Queue``,
interleaved with good jobs: invalid JSON, a pickle body (which would leave a marker file if
it were ever unpickled), missing ``task`` or ``id`` headers, a body that is not
``[args, kwargs, embed]``, an unknown task, a body over the worker's size limit (256 KiB),
non-UTF-8 bytes and headers of the wrong type. Each is dead-lettered with its reason on its
first delivery, logged once with its body cut to 1 KiB, and never unpickled; every good job
succeeds and the worker never reconnects or leaves ``running``.

The worker types differ only in how task code runs: decoding and dead-lettering happen in
the job loop every type shares (``BaseWorker._run_job`` and the consumer thread), before any
executor is involved, so the default run (100 bad among 1,000 good) uses AsyncWorker (task
calls on the event loop) and ThreadPoolWorker (task calls in threads); ProcessPoolWorker's
children never see a malformed message at all. The ``slow`` run (1,000 among 10,000)
takes all four types.

Raw garbage that is not even a transport envelope (a stray item in a Redis list, a garbage
row of the embedded broker) is tested on Redis and the embedded broker only: RabbitMQ's
frames are always valid envelopes (the broker itself parses them). kombu's own envelope
field, the ``compression`` header, can lie on every broker, RabbitMQ included: that case
runs on all three.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import pickle
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import contract_tasks  # noqa: F401 - registers the contract.* tasks
import pytest
from conftest import REDIS_DB, REDIS_HOST, async_wait_until, make_broker_url
from kombu.messaging import Producer

from uno_jobs import JobStatus, Queue
from uno_jobs.broker import parse_broker_url
from uno_jobs.broker._topology import kombu_queue
from uno_jobs.config import embedded_broker_path
from uno_jobs.message import DEFAULT_MAX_MESSAGE_BYTES
from uno_jobs.queue import JobSpec
from uno_jobs.worker import BaseWorker
from uno_jobs.worker._registry import get_worker_type

pytestmark = pytest.mark.integration

LOG_BODY_BYTES = 1024
_TOKEN = re.compile(r"bad-\d{5}-[a-z0-9_]+")


class _LeavesMarker:
    """Unpickling this creates the file ``path``: the proof that a body was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "x"))


@dataclass(frozen=True)
class Bad:
    """One malformed message, and how the worker must dead-letter it."""

    token: str  # in its body's first KiB (and its id, when it has one)
    reason: str
    body: bytes
    headers: dict[str, Any]
    content_type: str = "application/json"
    content_encoding: str = "utf-8"

    @property
    def indexed_as(self) -> str | None:
        """The job id of its dead letter: its ``id`` header, else a generated one (None)."""
        job_id = self.headers.get("id")
        return job_id if isinstance(job_id, str) else None


def _headers(token: str, **changes: Any) -> dict[str, Any]:
    headers: dict[str, Any] = {"task": "contract.add", "id": token, "retries": 0}
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


def _body(*items: Any) -> bytes:
    return json.dumps(list(items)).encode()


# Bodies that are JSON but not [args, kwargs, embed].
_SHAPES = [
    lambda token: {"args": [token]},
    lambda token: [[token], {}],
    lambda token: [token, {}, {}],
    lambda token: token,
    lambda token: [[token], [], {}],
]
_HEADER_TYPES: list[dict[str, Any]] = [
    {"retries": "three"},
    {"timelimit": "soon"},
    {"eta": 1_700_000_000},
    {"task": 42},
    {"origin": ["a", "list"]},
]


KINDS = [
    "invalid_json",
    "pickle",
    "no_task",
    "no_id",
    "body_shape",
    "unknown_task",
    "too_large",
    "not_utf8",
    "header_types",
]


def make_bad(i: int, markers: Path) -> Bad:
    """The ``i``-th malformed message; the kinds take turns, so each comes many times."""
    kind = KINDS[i % len(KINDS)]
    token = f"bad-{i:05d}-{kind}"
    n = i // len(KINDS)
    if kind == "invalid_json":
        return Bad(token, "decode_error", f'[["{token}"], {{"a": '.encode(), _headers(token))
    if kind == "pickle":
        body = pickle.dumps(_LeavesMarker(markers / token))
        headers = _headers(token)
        return Bad(
            token, "content_type_disallowed", body, headers, "application/x-python-serialize"
        )
    if kind == "no_task":
        return Bad(token, "invalid_message", _body([token], {}, {}), _headers(token, task=None))
    if kind == "no_id":
        headers = _headers(token, id=None)
        return Bad(token, "invalid_message", _body([token], {}, {}), headers)
    if kind == "body_shape":
        body = json.dumps(_SHAPES[n % len(_SHAPES)](token)).encode()
        return Bad(token, "invalid_message", body, _headers(token))
    if kind == "unknown_task":
        headers = _headers(token, task=f"no_such_task_{n}")
        return Bad(token, "unknown_task", _body([token], {}, {}), headers)
    if kind == "too_large":
        body = _body([token, "x" * DEFAULT_MAX_MESSAGE_BYTES], {}, {})
        return Bad(token, "too_large", body, _headers(token))
    if kind == "not_utf8":
        body = b'[["' + token.encode() + b'", "\xff\xfe\xfa"], {}, {}]'
        return Bad(token, "decode_error", body, _headers(token))
    assert kind == "header_types"
    headers = _headers(token, **_HEADER_TYPES[n % len(_HEADER_TYPES)])
    return Bad(token, "invalid_message", _body([token], {}, {}), headers)


# -- publishing ------------------------------------------------------------------------


def publish_interleaved(queue: Queue, bad: list[Bad], good_per_bad: int) -> list[str]:
    """``good_per_bad`` good jobs through ``Queue``, then one bad message through kombu,
    over and over; returns the good job ids."""
    good_ids: list[str] = []
    conn = parse_broker_url(queue.broker_url).connection()
    try:
        producer = Producer(conn.default_channel)
        declared = kombu_queue(queue.name)
        for n, item in enumerate(bad):
            specs = [JobSpec("contract.add", [n, k]) for k in range(good_per_bad)]
            if specs:
                good_ids += [h.id for h in queue.enqueue_many_sync(specs)]
            producer.publish(
                item.body,
                exchange=queue.name,
                routing_key=queue.name,
                content_type=item.content_type,
                content_encoding=item.content_encoding,
                headers=item.headers,
                declare=[declared],
                retry=True,
            )
    finally:
        conn.release()
    return good_ids


_CONCURRENCY: dict[str, dict[str, int]] = {
    "sync": {},
    "async": {"max_concurrent": 20},
    "thread": {"max_threads": 8},
    "process": {"max_processes": 2},
}


def _worker(kind: str, queue: Queue) -> BaseWorker:
    cls = get_worker_type(kind)
    options = _CONCURRENCY[kind]
    return cls(queue_name=queue.name, broker_url=queue.broker_url, batch_size=50, **options)


def check_malformed_run(
    broker_url: str,
    worker_kind: str,
    queue_name: str,
    markers: Path,
    caplog: pytest.LogCaptureFixture,
    n_bad: int,
    good_per_bad: int,
    timeout: float,
) -> None:
    probe = markers / "probe"
    pickle.loads(pickle.dumps(_LeavesMarker(probe)))  # the marker works: this test can fail
    assert probe.exists()
    probe.unlink()
    bad = [make_bad(i, markers) for i in range(n_bad)]
    n_good = n_bad * good_per_bad
    caplog.set_level(logging.WARNING, logger="uno_jobs")

    async def main() -> None:
        queue = Queue(queue_name, broker_url=broker_url)
        try:
            good_ids = await asyncio.to_thread(publish_interleaved, queue, bad, good_per_bad)
            worker = _worker(worker_kind, queue)
            await worker.start()
            try:
                await _run_until_done(worker, queue, n_good, n_bad, timeout)
                consumer = worker._consumer
                assert consumer is not None
                # One delivery per message: nothing was handed back or redelivered.
                assert consumer.deliveries == n_good + n_bad
                assert consumer.reconnects == 0 and consumer.connected
                assert consumer.invalid_envelopes == 0
                assert worker.stats.succeeded == n_good and worker.stats.failed == 0
            finally:
                await worker.shutdown()
            store = queue.store
            records = await asyncio.to_thread(lambda: [store.get(i) for i in good_ids])
            statuses = Counter(r.status if r else None for r in records)
            assert statuses == {JobStatus.SUCCEEDED: n_good}
            dead = await asyncio.to_thread(store.dead_letters, queue.name, n_bad + 10)
            _check_dead_letters(bad, dead)
            sizes = await queue.sizes()
            assert sizes[f"{queue.name}.dead"] == n_bad
            assert sum(v for k, v in sizes.items() if not k.endswith(".dead")) == 0
        finally:
            await queue.delete()
            queue.close()

    asyncio.run(main())
    assert not list(markers.iterdir()), "a pickle body was unpickled"
    _check_log_lines(bad, caplog.records)


async def _eventually(
    worker: BaseWorker, what: str, check: Callable[[], Awaitable[bool]], timeout: float
) -> None:
    """Wait for ``await check()``; the worker must stay ``running`` all along."""
    deadline = time.monotonic() + timeout
    while True:
        assert worker.state == "running", worker.state
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.05)


async def _run_until_done(
    worker: BaseWorker, queue: Queue, n_good: int, n_bad: int, timeout: float
) -> None:
    store, dead_queue = queue.store, f"{queue.name}.dead"

    async def good_done() -> bool:
        return worker.stats.succeeded + worker.stats.failed >= n_good

    async def bad_indexed() -> bool:
        dead = await asyncio.to_thread(store.dead_letters, queue.name, n_bad + 10)
        return len(dead) >= n_bad

    async def bad_published() -> bool:
        # A dead letter is published to q.dead after its index entry is written.
        return (await queue.sizes())[dead_queue] >= n_bad

    await _eventually(worker, "every good job finished", good_done, timeout)
    await _eventually(worker, "every bad message indexed", bad_indexed, 30)
    await _eventually(worker, "every bad message on q.dead", bad_published, 30)


def _check_dead_letters(bad: list[Bad], dead: list[Any]) -> None:
    assert len(dead) == len(bad)
    by_id = {d.job_id: d.reason for d in dead}
    expected = {b.indexed_as: b.reason for b in bad if b.indexed_as is not None}
    assert {i: by_id.get(i) for i in expected} == expected
    generated = Counter(d.reason for d in dead if d.job_id not in expected)
    assert generated == Counter(b.reason for b in bad if b.indexed_as is None)
    assert all(d.job_id.startswith("dead-") for d in dead if d.job_id not in expected)


def _check_log_lines(bad: list[Bad], records: list[logging.LogRecord]) -> None:
    lines: dict[str, list[str]] = {}
    for record in records:
        if record.name == "uno_jobs.broker" or "internal error" in record.getMessage():
            pytest.fail(f"unexpected log line: {record.getMessage()[:300]}")
        text = record.getMessage()
        for token in set(_TOKEN.findall(text)):
            lines.setdefault(token, []).append(text)
    for item in bad:
        found = lines.get(item.token, [])
        assert len(found) == 1, (item.token, len(found))
        (text,) = found
        assert item.reason in text
        # The body as logged: its first KiB, no more.
        assert repr(item.body[:LOG_BODY_BYTES]) in text, (item.token, text[:300])
        if len(item.body) > LOG_BODY_BYTES:
            assert repr(item.body[: LOG_BODY_BYTES + 1])[:-1] not in text


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    folder = tmp_path / "unpickled"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("worker_kind", ["async", "thread"])
def test_malformed_messages_among_good_jobs(
    broker_url: str,
    worker_kind: str,
    queue_name: str,
    markers: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if broker_url.startswith("sqs://"):
        # moto's server runs in this process and answers some tens of requests a second
        # here: every kind of bad message twice, three good jobs around each.
        n_bad, good_per_bad, timeout = 2 * len(KINDS), 3, 120.0
    else:
        n_bad, good_per_bad, timeout = 100, 10, 60.0
    check_malformed_run(
        broker_url, worker_kind, queue_name, markers, caplog, n_bad, good_per_bad, timeout
    )


@pytest.mark.slow
@pytest.mark.parametrize("worker_kind", ["sync", "async", "thread", "process"])
def test_malformed_messages_among_good_jobs_at_scale(
    broker_url: str,
    worker_kind: str,
    queue_name: str,
    markers: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    check_malformed_run(
        broker_url, worker_kind, queue_name, markers, caplog, 1_000, 10, timeout=600
    )


# -- raw garbage: not even a transport envelope ------------------------------------------


def _envelope(queue: str, marker: str, **changes: Any) -> bytes:
    """A kombu virtual-transport envelope of a good job, with ``changes`` made to it."""
    body = base64.b64encode(json.dumps([[marker], {}, {}]).encode()).decode()
    envelope: dict[str, Any] = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"id": marker, "task": "contract.add"},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": marker,
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "delivery_mode": 2,
            "priority": 0,
        },
    }
    envelope.update(changes)
    return json.dumps(envelope).encode()


def garbage(queue: str) -> dict[str, bytes]:
    """Items that are no kombu message, by the marker each carries in what gets logged."""
    gzip_claim = {"compression": "application/x-gzip", "id": "G09", "task": "contract.add"}
    return {
        "G01": b"G01 is not JSON at all",
        "G02": b"\xff\xfe G02 is not even UTF-8",
        "G03": b'[1, 2, "G03"]',
        "G04": b'{"__type__": "datetime", "__value__": "G04"}',
        "G05": b'{"properties": ["G05"]}',
        "G06": _envelope(queue, "G06", body="G06!"),  # not base64
        "G07": _envelope(queue, "G07", headers="G07 is not a table"),
        "G08": _envelope(queue, "G08", **{"content-type": 8}),
        "G09": _envelope(
            queue, "G09", body=base64.b64encode(b"G09 is not gzip").decode(), headers=gzip_claim
        ),
        "G10": b"G10 is long and not JSON " + b"x" * 5000,
    }


class RawBroker:
    """Puts raw items where the broker keeps a queue's messages, and counts what is left."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.url, self.queue = broker_url, queue
        self.kind = parse_broker_url(broker_url).kind

    def _redis(self) -> tuple[Any, str]:
        import redis

        host, port = REDIS_HOST.split(":")
        prefix = parse_qs(urlsplit(self.url).query)["key_prefix"][0]
        return redis.Redis(host=host, port=int(port), db=REDIS_DB), prefix

    def push(self, item: bytes) -> None:
        if self.kind == "redis":
            # kombu's Redis transport keeps a queue as a list named after it (priority 0),
            # under our key prefix; it LPUSHes and BRPOPs.
            client, prefix = self._redis()
            with client:
                client.lpush(prefix + self.queue, item)
        else:
            with sqlite3.connect(embedded_broker_path(self.url)) as db:
                text: str | bytes = item
                with contextlib.suppress(UnicodeDecodeError):
                    text = item.decode()
                db.execute(
                    "INSERT INTO broker_messages (queue, payload, enqueued_at) VALUES (?, ?, ?)",
                    (self.queue, text, time.time()),
                )
            db.close()

    def leftovers(self) -> int:
        """Items of the queue still on the broker: waiting, or held unacknowledged."""
        if self.kind == "redis":
            client, prefix = self._redis()
            with client:
                return int(client.llen(prefix + self.queue)) + int(client.hlen(prefix + "unacked"))
        with sqlite3.connect(embedded_broker_path(self.url)) as db:
            sql = "SELECT count(*) FROM broker_messages WHERE queue = ?"
            (count,) = db.execute(sql, (self.queue,)).fetchone()
        db.close()
        return int(count)


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_raw_garbage_is_logged_counted_and_dropped(
    kind: str, uno_home: Path, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, cleanup = make_broker_url(kind)
    items = garbage(queue_name)
    caplog.set_level(logging.WARNING, logger="uno_jobs")

    async def main() -> None:
        queue = Queue(queue_name, broker_url=url)
        raw = RawBroker(url, queue_name)
        try:
            good: list[str] = []
            for item in [*items.values(), None]:
                specs = [JobSpec("contract.add", [len(good), k]) for k in range(3)]
                good += [h.id for h in await queue.enqueue_many(specs)]
                if item is not None:
                    await asyncio.to_thread(raw.push, item)
            worker = _worker("async", queue)
            await worker.start()
            try:
                consumer = worker._consumer
                assert consumer is not None

                def done() -> bool:
                    assert worker.state == "running", worker.state
                    return worker.stats.succeeded == len(
                        good
                    ) and consumer.invalid_envelopes == len(items)

                await async_wait_until(done, timeout=30)
                assert worker.stats.invalid_envelopes == len(items)
                assert consumer.reconnects == 0 and consumer.connected
                assert worker.stats.failed == 0
            finally:
                await worker.shutdown()
            assert await asyncio.to_thread(raw.leftovers) == 0
            assert await asyncio.to_thread(queue.store.dead_letters, queue.name) == []
            for job_id in good:
                assert (await queue.get_job(job_id)).status == JobStatus.SUCCEEDED
        finally:
            await queue.delete()
            queue.close()

    try:
        asyncio.run(main())
    finally:
        cleanup()
    _check_envelope_log_lines(caplog.records, queue_name, items)


def _check_envelope_log_lines(
    records: list[logging.LogRecord], queue: str, items: dict[str, bytes]
) -> None:
    """One line per item, naming the queue and showing what was dropped (its first KiB)."""
    lines = [r.getMessage() for r in records]
    assert all(r.name == "uno_jobs.broker" and r.levelno == logging.ERROR for r in records), lines
    assert len(lines) == len(items), lines
    for marker in items:
        (line,) = [text for text in lines if marker in text]
        assert line.startswith(f"dropped an invalid envelope from queue {queue}: "), line
        assert len(line) < 4 * LOG_BODY_BYTES + 400, line[:300]
    (long_line,) = [text for text in lines if "G10" in text]
    assert long_line.endswith(repr(items["G10"][:LOG_BODY_BYTES])), long_line[:300]


def test_body_that_does_not_decompress_is_dropped(
    broker_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``compression`` header that lies makes kombu fail before the worker sees the
    message, on every broker. Before, RabbitMQ handed it back on each reconnect, forever."""
    caplog.set_level(logging.WARNING, logger="uno_jobs")

    async def main() -> None:
        queue = Queue(queue_name, broker_url=broker_url)
        try:
            first = await queue.enqueue_many([JobSpec("contract.add", [1, k]) for k in range(3)])
            bad = Bad(
                "bad-00000-gzip",
                "",
                b"bad-00000-gzip is not gzip",
                {"compression": "application/x-gzip", "id": "gz", "task": "contract.add"},
            )
            await asyncio.to_thread(publish_interleaved, queue, [bad], 0)
            last = await queue.enqueue_many([JobSpec("contract.add", [2, k]) for k in range(3)])
            worker = _worker("async", queue)
            await worker.start()
            try:
                for handle in [*first, *last]:
                    await handle.wait(timeout=15)
                consumer = worker._consumer
                assert consumer is not None
                await async_wait_until(lambda: consumer.invalid_envelopes == 1)
                assert consumer.reconnects == 0 and consumer.connected
                assert worker.state == "running"
            finally:
                await worker.shutdown()
            assert await queue.size() == 0
        finally:
            await queue.delete()
            queue.close()

    asyncio.run(main())
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"dropped an invalid envelope from queue {queue_name}: ")
    assert "does not decompress as 'application/x-gzip'" in line
    assert line.endswith(repr(b"bad-00000-gzip is not gzip"))
