"""The embedded broker's kombu transport (SQLite): delivery, acks, leases, processes.

Needs no server, but spawns processes and kills one, hence ``integration``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from uno_jobs.broker._embedded import Transport
from uno_jobs.errors import ConfigurationError

pytestmark = pytest.mark.integration

QUEUE = "jobs"
SPAWN = multiprocessing.get_context("spawn")


def connect(path: Path, visibility_timeout: float = 30.0) -> Any:
    options = {
        "path": str(path),
        "visibility_timeout": visibility_timeout,
        "polling_interval": 0.01,
    }
    return Connection(transport=Transport, transport_options=options)


def declared(channel: Any, name: str = QUEUE) -> Any:
    """The queue as uno_jobs and Celery declare it: a direct exchange named like it."""
    queue = Queue(name, Exchange(name, type="direct", durable=True), routing_key=name)(channel)
    queue.declare()
    return queue


def publish(conn: Any, bodies: list[Any], name: str = QUEUE, **kwargs: Any) -> None:
    channel = conn.channel()
    declared(channel, name)
    producer = Producer(channel)
    for body in bodies:
        producer.publish(body, exchange=name, routing_key=name, **kwargs)
    channel.close()


def poll(conn: Any, timeout: float) -> None:
    """One ``drain_events`` call; returning empty-handed is fine."""
    with contextlib.suppress(TimeoutError):  # socket.timeout
        conn.drain_events(timeout=timeout)


def drain(conn: Any, until: Callable[[], bool], timeout: float = 10.0) -> None:
    """Drain events until ``until()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        poll(conn, 0.05)


def drain_for(conn: Any, seconds: float) -> None:
    """Keep a consumer polling for a while (to show that something does *not* happen)."""
    end = time.monotonic() + seconds
    drain(conn, until=lambda: time.monotonic() >= end)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def rows(path: Path) -> list[tuple[int, str, float | None]]:
    """``(id, queue, lease_until)`` of every message row, read behind kombu's back."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, queue, lease_until FROM broker_messages").fetchall()


class Inbox:
    """A kombu consumer callback that keeps what it got; acks unless told otherwise."""

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.messages: list[Any] = []

    def __call__(self, body: Any, message: Any) -> None:
        self.messages.append(message)
        if self.ack:
            message.ack()

    @property
    def bodies(self) -> list[Any]:
        return [m.decode() for m in self.messages]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "not-yet" / "broker.sqlite3"


@pytest.fixture
def conn(path: Path) -> Iterator[Any]:
    with connect(path) as connection:
        yield connection


def consume(conn: Any, inbox: Inbox, prefetch: int = 0, name: str = QUEUE) -> Any:
    """Start consuming on the connection's default channel (the one to inspect)."""
    channel = conn.default_channel
    consumer = Consumer(channel, queues=[declared(channel, name)], callbacks=[inbox])
    consumer.qos(prefetch_count=prefetch)
    consumer.consume()
    return consumer


# -- single process -------------------------------------------------------------------------


def test_round_trip_keeps_body_headers_and_content_type_and_acks_delete_rows(
    path: Path, conn: Any
) -> None:
    payload = bytes(range(256))
    publish(
        conn,
        [payload],
        headers={"task": "add", "id": "j-1"},
        content_type="application/x-uno",
        content_encoding="binary",
    )
    publish(conn, [{"n": i} for i in range(5)], serializer="json")
    assert len(rows(path)) == 6

    inbox = Inbox()
    consumer = Consumer(conn.default_channel, queues=[declared(conn.default_channel)])
    consumer.register_callback(inbox)
    consumer.accept = {"application/x-uno", "application/json"}
    consumer.consume()
    drain(conn, until=lambda: len(inbox.messages) == 6)

    first = inbox.messages[0]
    assert first.body == payload
    assert first.headers == {"task": "add", "id": "j-1"}
    assert first.content_type == "application/x-uno"
    assert first.delivery_info["routing_key"] == QUEUE
    assert first.delivery_info["redelivered"] is False
    assert [m.decode() for m in inbox.messages[1:]] == [{"n": i} for i in range(5)]  # FIFO
    assert rows(path) == []


def test_reject_with_requeue_redelivers_and_without_deletes(path: Path, conn: Any) -> None:
    publish(conn, ["again", "gone"])
    inbox = Inbox(ack=False)
    consume(conn, inbox, prefetch=1)

    drain(conn, until=lambda: len(inbox.messages) == 1)
    inbox.messages[0].reject(requeue=True)
    drain(conn, until=lambda: len(inbox.messages) == 2)
    again = inbox.messages[1]
    assert again.decode() == "again"
    assert again.delivery_info["redelivered"] is True
    assert again.delivery_info["uno_delivery_count"] == 2
    assert again.delivery_tag != inbox.messages[0].delivery_tag
    again.ack()

    drain(conn, until=lambda: len(inbox.messages) == 3)
    inbox.messages[2].reject(requeue=False)
    assert rows(path) == []


def test_prefetch_count_bounds_what_a_consumer_holds(path: Path, conn: Any) -> None:
    publish(conn, list(range(20)))
    inbox = Inbox(ack=False)
    consume(conn, inbox, prefetch=5)

    drain(conn, until=lambda: len(inbox.messages) == 5)
    drain_for(conn, 0.3)
    assert len(inbox.messages) == 5
    channel = conn.default_channel
    assert channel.leased_count(QUEUE) == 5
    assert channel._size(QUEUE) == 15

    inbox.messages[0].ack()
    drain(conn, until=lambda: len(inbox.messages) == 6)
    drain_for(conn, 0.2)
    assert len(inbox.messages) == 6


def test_closing_the_channel_hands_back_unacked_messages_at_once(path: Path) -> None:
    with connect(path) as producer_conn:
        publish(producer_conn, ["a", "b", "c"])
    holder = connect(path)
    inbox = Inbox(ack=False)
    consume(holder, inbox, prefetch=3)
    drain(holder, until=lambda: len(inbox.messages) == 3)
    assert all(lease is not None for _, _, lease in rows(path))

    holder.close()

    assert [lease for _, _, lease in rows(path)] == [None, None, None]  # no copies either
    with connect(path) as other:
        got = [other.default_channel.basic_get(QUEUE) for _ in range(3)]
        assert [m.decode() for m in got] == ["a", "b", "c"]
        assert all(m.delivery_info["redelivered"] for m in got)


def test_recover_hands_back_what_the_channel_holds_without_copies(path: Path, conn: Any) -> None:
    publish(conn, ["a", "b"])
    channel = conn.default_channel
    held = [channel.basic_get(QUEUE), channel.basic_get(QUEUE)]
    assert channel._size(QUEUE) == 0
    assert channel.leased_count(QUEUE) == 2

    channel.basic_recover(requeue=True)

    assert channel._size(QUEUE) == 2
    assert len(rows(path)) == 2
    again = [channel.basic_get(QUEUE), channel.basic_get(QUEUE)]
    assert [m.decode() for m in again] == [m.decode() for m in held]


def test_a_live_consumer_keeps_its_lease_past_the_visibility_timeout(path: Path) -> None:
    with connect(path) as producer_conn:
        publish(producer_conn, ["long job"])
    holder, rival = connect(path, visibility_timeout=0.6), connect(path, visibility_timeout=0.6)
    try:
        held = Inbox(ack=False)
        holding = consume(holder, held, prefetch=1)
        drain(holder, until=lambda: len(held.messages) == 1)

        stolen = Inbox()
        consume(rival, stolen)
        deadline = time.monotonic() + 2.5  # four visibility timeouts
        while time.monotonic() < deadline:
            for connection in (holder, rival):  # the holder polls, so it extends its lease
                poll(connection, 0.02)
        assert stolen.messages == []
        assert holding.channel.extend_leases() == 1

        held.messages[0].ack()
        assert rows(path) == []
    finally:
        holder.close()
        rival.close()


def test_no_ack_consumers_take_rows_for_good(path: Path, conn: Any) -> None:
    publish(conn, ["x", "y"])
    message = conn.default_channel.basic_get(QUEUE, no_ack=True)
    assert message.decode() == "x"
    assert [queue for _, queue, _ in rows(path)] == [QUEUE]


def test_purge_and_size_count_only_available_messages(path: Path, conn: Any) -> None:
    publish(conn, list(range(4)))
    channel = conn.default_channel
    held = channel.basic_get(QUEUE)
    assert channel.queue_declare(QUEUE, passive=True).message_count == 3
    assert channel.queue_purge(QUEUE) == 3
    assert channel.leased_count(QUEUE) == 1
    held.ack()
    assert rows(path) == []


def test_publishing_to_an_undeclared_exchange_raises_instead_of_dropping(
    path: Path, conn: Any
) -> None:
    channel = conn.default_channel
    with pytest.raises(Exception, match="NOT_FOUND"):
        channel.basic_publish(channel.prepare_message("lost?"), exchange="nowhere", routing_key="x")
    assert rows(path) == []


def test_a_missing_path_is_a_configuration_error_naming_the_option() -> None:
    with pytest.raises(ConfigurationError, match="'path'"):
        Connection(transport=Transport, transport_options={}).connect()
    with pytest.raises(ConfigurationError, match="'visibility_timeout'"):
        Connection(
            transport=Transport, transport_options={"path": "/tmp/x.db", "visibility_timeout": 0}
        ).connect()


# -- several processes -----------------------------------------------------------------------


def _consumer_process(path: str, ready: Any, stop: Any, results: Any) -> None:
    got: list[int] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    with connect(Path(path)) as conn:
        consumer = Consumer(
            conn.channel(), queues=[declared(conn.channel())], callbacks=[on_message]
        )
        consumer.qos(prefetch_count=10)
        consumer.consume()
        ready.put(os.getpid())
        while not stop.is_set():
            poll(conn, 0.05)
    results.put(got)


def _holding_process(path: str, received: Any) -> None:
    def on_message(body: Any, message: Any) -> None:
        received.put(body)
        time.sleep(3600)  # never acks: killed here

    with connect(Path(path), visibility_timeout=1.0) as conn:
        Consumer(
            conn.channel(), queues=[declared(conn.channel())], callbacks=[on_message]
        ).consume()
        while True:
            poll(conn, 1)


def test_two_consumer_processes_get_each_message_exactly_once(path: Path) -> None:
    ready, results, stop = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    workers = [
        SPAWN.Process(target=_consumer_process, args=(str(path), ready, stop, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=30)
        with connect(path) as conn:  # published here, consumed in the other processes
            publish(conn, list(range(2000)))
        wait_until(lambda: rows(path) == [], timeout=60)
        stop.set()
        got = [results.get(timeout=30) for _ in workers]
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    assert sorted(got[0] + got[1]) == list(range(2000))
    assert all(got), "both processes should have taken part"


def test_a_killed_consumers_message_is_delivered_again_after_the_visibility_timeout(
    path: Path,
) -> None:
    with connect(path) as conn:
        publish(conn, ["survivor"])
    received = SPAWN.Queue()
    victim = SPAWN.Process(target=_holding_process, args=(str(path), received))
    victim.start()
    try:
        assert received.get(timeout=30) == "survivor"
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
    assert victim.exitcode == -signal.SIGKILL

    with connect(path, visibility_timeout=1.0) as conn:
        inbox = Inbox()
        consume(conn, inbox)
        drain(conn, until=lambda: len(inbox.messages) == 1, timeout=15)
    message = inbox.messages[0]
    assert message.decode() == "survivor"
    assert message.delivery_info["redelivered"] is True
    assert message.delivery_info["uno_delivery_count"] == 2
    assert rows(path) == []
