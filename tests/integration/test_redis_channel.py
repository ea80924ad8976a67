"""uno_jobs' Redis channel (``uno_jobs/broker/_redis.py``) against the real Redis.

The channel takes messages with one Lua script that records them as unacknowledged in the
same step, so no cut, half-open or killed connection loses a message; it keeps kombu's keys
and formats, so kombu's and Celery's own code still reads and restores what it writes.
Every test has its own key prefix in the test database (``make_broker_url``) and deletes
its keys afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from ssl import CERT_NONE
from typing import Any
from urllib.parse import parse_qs, urlsplit

import contract_tasks  # noqa: F401 - registers the contract.* tasks
import pytest
import redis
from conftest import REDIS_DB, REDIS_HOST, async_wait_until, make_broker_url, wait_until
from kombu import Connection
from kombu.messaging import Consumer, Producer
from tcp_proxy import TcpProxy

from uno_jobs import Queue
from uno_jobs.broker import Broker, parse_broker_url
from uno_jobs.broker._redis import FETCH_LIMIT, OWNER_TTL_FACTOR, Channel, Transport
from uno_jobs.broker._redis_scripts import FETCH_SCRIPT
from uno_jobs.broker._topology import kombu_queue, level_queues
from uno_jobs.worker._registry import get_worker_type

pytestmark = pytest.mark.integration

HOST, PORT = REDIS_HOST.split(":")
LEVELS = [name for name, _ in level_queues("q")]  # q.critical, q.high, q, q.low


class Isolated:
    """A broker URL with its own key prefix, and a plain client to look at the keys."""

    def __init__(self, visibility_timeout: float) -> None:
        self.url, self._cleanup = make_broker_url("redis", visibility_timeout=visibility_timeout)
        self.prefix = parse_qs(urlsplit(self.url).query)["key_prefix"][0]
        self.raw = redis.Redis(host=HOST, port=int(PORT), db=REDIS_DB)

    def key(self, name: str) -> str:
        return self.prefix + name

    def unacked(self) -> dict[bytes, bytes]:
        return self.raw.hgetall(self.key("unacked"))

    def owned(self, channel: Channel) -> set[str]:
        """The tags in ``channel``'s owner set."""
        members = self.raw.smembers(self.key(f"unacked_owner:{channel.lease_owner}"))
        return {tag.decode() for tag in members}

    def close(self) -> None:
        self._cleanup()
        self.raw.close()


@pytest.fixture
def redis_home() -> Iterator[Isolated]:
    home = Isolated(visibility_timeout=1.0)
    try:
        yield home
    finally:
        home.close()


@contextmanager
def channel_on(url: str, queues: list[str] = LEVELS) -> Iterator[tuple[Connection, Channel]]:
    conn = parse_broker_url(url).connection()
    try:
        conn.ensure_connection(max_retries=1)
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        for name in queues:
            kombu_queue(name)(channel).declare()
        yield conn, channel
    finally:
        conn.release()


def publish(channel: Any, queue: str, body: Any, priority: int | None = None) -> None:
    Producer(channel).publish(
        body, exchange=queue, routing_key=queue, serializer="json", priority=priority
    )


def consume(channel: Any, prefetch: int, queues: list[str] = LEVELS) -> list[Any]:
    """Start consuming ``queues`` on ``channel``; returns the list deliveries land in."""
    received: list[Any] = []
    consumer = Consumer(
        channel,
        queues=[kombu_queue(name)(channel) for name in queues],
        on_message=received.append,
        accept=None,
    )
    consumer.qos(prefetch_count=prefetch)
    consumer.consume()
    return received


def drain_until(conn: Connection, predicate: Callable[[], object], timeout: float = 10) -> None:
    def step() -> object:
        with suppress(TimeoutError):
            conn.drain_events(timeout=0.05)
        return predicate()

    wait_until(step, timeout=timeout, interval=0)


def drain_more(conn: Connection, received: list[Any]) -> None:
    """Drain until at least one more message arrived."""
    count = len(received)
    drain_until(conn, lambda: len(received) > count)


def drain_for(conn: Connection, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with suppress(TimeoutError):
            conn.drain_events(timeout=0.05)


def run(coro_fn: Callable[[], Any]) -> None:
    asyncio.run(coro_fn())


# -- the fetch ----------------------------------------------------------------------------


def test_a_fetch_records_each_message_as_kombu_would(redis_home: Isolated) -> None:
    with channel_on(redis_home.url) as (conn, channel):
        for i in range(3):
            publish(channel, "q", {"n": i, "text": 'é/\\"x'})
        # Oldest first: kombu pushes on the left and pops on the right.
        raw_items = list(reversed(redis_home.raw.lrange(redis_home.key("q"), 0, -1)))
        before = time.time()
        received = consume(channel, prefetch=10)
        drain_until(conn, lambda: len(received) == 3)
        after = time.time()
        assert [m.payload["n"] for m in received] == [0, 1, 2]
        assert redis_home.raw.llen(redis_home.key("q")) == 0
        unacked = redis_home.unacked()
        for message, raw in zip(received, raw_items, strict=True):
            tag = message.delivery_tag.encode()
            # The item's bytes, untouched, between the brackets.
            assert unacked[tag] == b"[" + raw + b', "q", "q"]'
            assert json.loads(unacked[tag]) == [json.loads(raw), "q", "q"]
            score = redis_home.raw.zscore(redis_home.key("unacked_index"), tag)
            assert score is not None and before - 0.01 <= score <= after + 0.01
        channel.basic_ack_many([m.delivery_tag for m in received])
        assert redis_home.unacked() == {}
        assert redis_home.raw.zcard(redis_home.key("unacked_index")) == 0


def test_a_fetch_reads_the_cancellations_version_with_its_messages(
    redis_home: Isolated,
) -> None:
    """With ``cancel_version_key`` set, each message carries the key's value as the fetch
    that took it read it ('0' while unset); the reply of an empty fetch stays empty."""
    version_key = redis_home.key("jobs:cancel_version")
    with channel_on(redis_home.url) as (conn, channel):
        received = consume(channel, prefetch=10)
        publish(channel, "q", {"n": 0})
        drain_until(conn, lambda: len(received) == 1)
        assert received[0].cancel_version is None, "no key: no reading"
        channel.cancel_version_key = version_key
        redis_home.raw.set(version_key, 7)
        publish(channel, "q", {"n": 1})
        publish(channel, "q", {"n": 2})
        drain_until(conn, lambda: len(received) == 3)
        redis_home.raw.delete(version_key)
        publish(channel, "q", {"n": 3})
        drain_until(conn, lambda: len(received) == 4)
        assert [(m.payload["n"], m.cancel_version) for m in received] == [
            (0, None),
            (1, 7),
            (2, 7),
            (3, 0),
        ]
        keys, owners = channel._lists(["q"])
        assert channel._fetch_now(keys, owners, 4) == [], "nothing taken, no version"
        redis_home.raw.set(version_key, 8)
        publish(channel, "q", {"n": 4})
        reply = channel._fetch_now(keys, owners, 4)
        assert len(reply) == 3 + 1 and reply[-1] == b"8"
        [item] = channel._parse(reply, keys, owners)
        assert item.payload["body"] and item.tag == reply[1].decode()
        channel.qos.forget([item.tag])
        redis_home.raw.set(version_key, "not a count")
        publish(channel, "q", {"n": 5})
        drain_until(conn, lambda: len(received) == 5)
        assert received[4].cancel_version is None, "no reading: the worker reads the store"
        channel.basic_ack_many([m.delivery_tag for m in received])
        assert redis_home.unacked() == {}


def test_a_fetch_never_takes_more_than_its_window(redis_home: Isolated) -> None:
    with channel_on(redis_home.url) as (conn, channel):
        for i in range(20):
            publish(channel, "q", {"n": i})
        keys, owners = channel._lists(["q"])
        reply = channel._fetch_now(keys, owners, 4)
        assert len(reply) == 3 * 4, "position, tag and item of exactly 4 messages"
        assert len(redis_home.unacked()) == 4
        assert redis_home.raw.llen(redis_home.key("q")) == 16
        channel.qos.forget([tag.decode() for tag in reply[1::3]])

        received = consume(channel, prefetch=3)
        drain_for(conn, 0.3)
        assert len(received) == 3 and len(redis_home.unacked()) == 3
        channel.basic_ack_many([m.delivery_tag for m in received[:2]])
        drain_for(conn, 0.3)
        assert len(received) == 5, "two acks made room for two more, no more"
        assert len(redis_home.unacked()) == 3
        assert redis_home.raw.llen(redis_home.key("q")) == 11


def test_a_fetch_without_a_window_takes_at_most_the_fetch_limit(redis_home: Isolated) -> None:
    with channel_on(redis_home.url) as (conn, channel):
        for i in range(FETCH_LIMIT + 50):
            publish(channel, "q", {"n": i})
        received = consume(channel, prefetch=0)
        drain_until(conn, lambda: received)
        assert len(received) == FETCH_LIMIT, "one fetch, one delivery round"
        drain_until(conn, lambda: len(received) == FETCH_LIMIT + 50)


def test_priority_order_holds_across_levels_with_a_backlog(redis_home: Isolated) -> None:
    with channel_on(redis_home.url) as (conn, channel):
        for i in range(30):
            for level in reversed(LEVELS):  # the lowest first, every time
                publish(channel, level, {"level": level, "n": i})
        for i in range(5):  # a producer's kombu priority: the "q" list's sub-key
            publish(channel, "q", {"level": "q", "n": 100 + i}, priority=5)
        received = consume(channel, prefetch=7)
        acked = 0
        while len(received) < 125:
            drain_more(conn, received)
            channel.basic_ack_many([m.delivery_tag for m in received[acked:]])
            acked = len(received)
        order = [(m.payload["level"], m.payload["n"]) for m in received]
        expected = [(level, i) for level in LEVELS for i in range(30)]
        normal_end = 3 * 30
        expected[normal_end:normal_end] = [("q", 100 + i) for i in range(5)]
        assert order == expected
        assert redis_home.unacked() == {}


def test_items_that_are_not_envelopes_are_dropped_and_reported(redis_home: Isolated) -> None:
    def envelope(tag: str, body: str) -> bytes:
        properties = {"delivery_tag": tag, "body_encoding": "base64", "delivery_info": {}}
        return json.dumps({"body": body, "headers": {}, "properties": properties}).encode()

    garbage = [
        b"not json at all",
        b'{"properties": {"no": "tag"}}',
        envelope("bad-base64", "%%% not base64 %%%"),
        envelope("bad-utf8", "eyJ9").replace(b"eyJ9", b"\xff"),  # cjson reads it, Python not
    ]
    with channel_on(redis_home.url, ["q"]) as (conn, channel):
        publish(channel, "q", {"n": 0})
        redis_home.raw.lpush(redis_home.key("q"), *garbage)
        publish(channel, "q", {"n": 1})
        reported: list[tuple[str, object, str]] = []
        channel.on_invalid_envelope = lambda *args: reported.append(args)
        received = consume(channel, prefetch=10, queues=["q"])
        drain_until(conn, lambda: len(received) == 2)
        assert [m.payload["n"] for m in received] == [0, 1]
        problems = {raw: problem for queue, raw, problem in reported if queue == "q"}
        assert sorted(problems) == sorted(garbage) and len(reported) == len(garbage)
        assert "no properties.delivery_tag" in problems[garbage[0]]
        assert "no properties.delivery_tag" in problems[garbage[1]]
        assert "kombu cannot read it" in problems[garbage[2]]
        assert "UnicodeDecodeError" in problems[garbage[3]]
        assert redis_home.raw.llen(redis_home.key("q")) == 0
        assert set(redis_home.unacked()) == {m.delivery_tag.encode() for m in received}


# -- nothing is lost ----------------------------------------------------------------------


def test_a_fetch_reply_lost_with_its_connection_comes_back(redis_home: Isolated) -> None:
    with channel_on(redis_home.url) as (conn, channel):
        for i in range(3):
            publish(channel, "q", {"n": i})
        consume(channel, prefetch=10)

        def lose_the_reply() -> None:
            # The script ran on the server; the reply dies with the connection.
            channel.client.connection.disconnect()
            raise redis.ConnectionError("connection cut before the reply was read")

        channel.handlers["BRPOP"] = lose_the_reply
        fetched_at = time.time()
        with pytest.raises(redis.ConnectionError):
            drain_until(conn, lambda: False, timeout=5)
        assert redis_home.raw.llen(redis_home.key("q")) == 0
        assert len(redis_home.unacked()) == 3, "taken and recorded in one step"

    with channel_on(redis_home.url) as (conn, channel):
        received = consume(channel, prefetch=10)
        drain_until(conn, lambda: len(received) == 3)
        assert time.time() - fetched_at >= 1.0, "restored after the visibility timeout"
        assert sorted(m.payload["n"] for m in received) == [0, 1, 2]
        assert all(m.delivery_info.get("redelivered") for m in received)


def test_a_sweep_that_dies_holding_its_lock_holds_restores_back_for_seconds(
    redis_home: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep holds a lock key around its restores. A sweep whose connection dies with
    the lock taken leaves the key behind (a lost reply to the lock's SET or release does
    the same); with kombu's expiry of 300 s no consumer would restore anything for five
    minutes."""
    with channel_on(redis_home.url) as (conn, channel):
        publish(channel, "q", {"n": 1})
        consume(channel, prefetch=10)

        def lose_the_reply() -> None:
            channel.client.connection.disconnect()
            raise redis.ConnectionError("connection cut before the reply was read")

        channel.handlers["BRPOP"] = lose_the_reply
        with pytest.raises(redis.ConnectionError):
            drain_until(conn, lambda: False, timeout=5)
        assert len(redis_home.unacked()) == 1

    def cut(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("connection cut during the sweep")

    with channel_on(redis_home.url) as (conn, channel):
        time.sleep(1.1)  # the message is past its visibility timeout
        with monkeypatch.context() as patch:
            patch.setattr(channel.qos, "restore_by_tag", cut)
            patch.setattr(redis.lock.Lock, "release", cut)
            with pytest.raises(redis.ConnectionError):
                channel.qos.restore_visible(num=10, interval=1)
        lock = redis_home.key("unacked_mutex")
        assert 0 < redis_home.raw.pttl(lock) <= 5000, "left behind, with a short expiry"
        assert len(redis_home.unacked()) == 1
        left_at = time.monotonic()

    with channel_on(redis_home.url) as (conn, channel):
        received = consume(channel, prefetch=10)
        drain_until(conn, lambda: len(received) == 1, timeout=15)
        assert received[0].payload == {"n": 1}
        assert time.monotonic() - left_at < 8


def test_a_fetch_on_its_way_at_close_is_handed_back_in_order(redis_home: Isolated) -> None:
    with channel_on(redis_home.url) as (conn, channel):
        for i in range(5):
            publish(channel, "q", {"n": i})
        items = redis_home.raw.lrange(redis_home.key("q"), 0, -1)
        consume(channel, prefetch=10)
        conn.transport.cycle.on_poll_start()  # sends the fetch; nobody reads the reply
        wait_until(lambda: redis_home.raw.llen(redis_home.key("q")) == 0)
    assert redis_home.raw.lrange(redis_home.key("q"), 0, -1) == items
    assert redis_home.unacked() == {}


def test_a_sigkilled_consumers_messages_come_back_after_the_visibility_timeout() -> None:
    redis_home = Isolated(visibility_timeout=2.0)
    try:
        _check_sigkilled_consumer(redis_home)
    finally:
        redis_home.close()


def _holder_script(url: str, *, report_owner: bool = False) -> str:
    """A consumer process that takes 5 messages of "q", prints "held 5" and waits to be
    killed; with ``report_owner`` it first prints its channel's owner id (all it ever
    reports: nothing is held yet)."""
    owner = "print(channel.lease_owner, flush=True)\n" if report_owner else ""
    return f"""
import time
from kombu.messaging import Consumer
from uno_jobs.broker import parse_broker_url
from uno_jobs.broker._topology import kombu_queue
conn = parse_broker_url({url!r}).connection()
channel = conn.default_channel
{owner}held = []
consumer = Consumer(channel, queues=[kombu_queue("q")(channel)], on_message=held.append)
consumer.qos(prefetch_count=5)
consumer.consume()
while len(held) < 5:
    try:
        conn.drain_events(timeout=0.05)
    except TimeoutError:
        pass
print("held", len(held), flush=True)
time.sleep(600)
"""


def _check_sigkilled_consumer(redis_home: Isolated) -> None:
    holder = _holder_script(redis_home.url)
    with channel_on(redis_home.url) as (conn, channel):
        for i in range(8):
            publish(channel, "q", {"n": i})
        proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"held 5"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert len(redis_home.unacked()) == 5
        index = redis_home.raw.zrange(redis_home.key("unacked_index"), 0, -1, withscores=True)
        fetched_at = max(score for _, score in index)
        received = consume(channel, prefetch=10)
        drain_until(conn, lambda: len(received) == 3)
        assert [m.payload["n"] for m in received] == [5, 6, 7]
        channel.basic_ack_many([m.delivery_tag for m in received])
        drain_until(conn, lambda: len(received) >= 8)
        assert time.time() - fetched_at >= 2.0, "not before the visibility timeout"
        assert sorted(m.payload["n"] for m in received[3:]) == [0, 1, 2, 3, 4]
        assert all(m.delivery_info.get("redelivered") for m in received[3:])


def _proxied(url: str) -> tuple[TcpProxy, str]:
    proxy = TcpProxy(HOST, int(PORT))
    return proxy, url.replace(f"{HOST}:{PORT}", f"{HOST}:{proxy.port}")


def test_no_job_is_lost_when_the_connection_is_cut_again_and_again(
    uno_home: Path, queue_name: str
) -> None:
    """Each round cuts the worker's connections, then enqueues: the first jobs meet a poll
    command still in flight on a connection being torn down (kombu's BRPOP takes a job into
    it and loses it). Odd rounds cut once more while the jobs run."""
    home = Isolated(visibility_timeout=2.0)
    proxy, proxied = _proxied(home.url)
    rounds, per_round = 6, 20

    async def main() -> None:
        queue = Queue(queue_name, broker_url=home.url)
        worker = get_worker_type("async")(
            queue_name=queue_name, broker_url=proxied, store_url=queue.store_url, max_concurrent=8
        )
        await worker.start()
        try:
            for n in range(rounds):
                proxy.cut()
                jobs = [await queue.enqueue("contract.add", [n, i]) for i in range(per_round)]
                if n % 2:
                    first = jobs[0].id
                    await async_wait_until(lambda: queue.get_job_sync(first).finished)  # noqa: B023
                    proxy.cut()
                results = [await job.wait(timeout=30) for job in jobs]
                assert results == [n + i for i in range(per_round)]
            assert proxy.accepted > rounds, "the worker reconnected after each cut"
        finally:
            await worker.shutdown(wait=False)
            await queue.delete()
            queue.close()

    try:
        run(main)
    finally:
        proxy.close()
        home.close()


class FreezingProxy(TcpProxy):
    """A ``TcpProxy`` whose ``freeze()`` silences the connections open at that moment for
    good (bytes either way are held, nothing is closed: a half-open network path), while
    connections made afterwards flow."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._frozen: frozenset[socket.socket] = frozenset()
        super().__init__(target_host, target_port)

    def freeze(self) -> None:
        with self._lock:
            self._frozen = frozenset(self._sockets)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while src in self._frozen:
                    if self._closed:
                        return
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def test_a_half_open_connection_loses_nothing(uno_home: Path, queue_name: str) -> None:
    """The worker's connections go silent without closing. A poll command sent before is
    held, or its reply is (kombu's BRPOP: with the first job in it, lost for good); the
    worker notices the silence, connects again and gets every job."""
    home = Isolated(visibility_timeout=2.0)
    proxy = FreezingProxy(HOST, int(PORT))
    proxied = home.url.replace(f"{HOST}:{PORT}", f"{HOST}:{proxy.port}")

    async def main() -> None:
        queue = Queue(queue_name, broker_url=home.url)
        worker = get_worker_type("async")(
            queue_name=queue_name, broker_url=proxied, store_url=queue.store_url
        )
        await worker.start()
        try:
            assert await (await queue.enqueue("contract.add", [1, 1])).wait(timeout=15) == 2
            connections = proxy.accepted
            proxy.freeze()
            jobs = [await queue.enqueue("contract.add", [i, 10]) for i in range(5)]
            assert [await job.wait(timeout=40) for job in jobs] == [10, 11, 12, 13, 14]
            assert proxy.accepted > connections, "it connected again"
        finally:
            await worker.shutdown(wait=False)
            await queue.delete()
            queue.close()

    try:
        run(main)
    finally:
        proxy.close()
        home.close()


# -- settling -----------------------------------------------------------------------------


def test_reject_with_requeue_keeps_kombus_semantics(redis_home: Isolated) -> None:
    with channel_on(redis_home.url) as (conn, channel):
        for i in range(3):
            publish(channel, "q", {"n": i})
        received = consume(channel, prefetch=1)
        drain_until(conn, lambda: len(received) == 1)
        received[0].reject(requeue=True)
        assert redis_home.unacked() == {}
        # kombu's restore_by_tag(leftmost=True): LPUSH, the end of the list read last.
        drain_until(conn, lambda: len(received) == 2)
        received[1].ack()
        drain_until(conn, lambda: len(received) == 3)
        received[2].ack()
        drain_until(conn, lambda: len(received) == 4)
        assert [m.payload["n"] for m in received] == [0, 1, 2, 0]
        assert received[3].delivery_info.get("redelivered")


# -- owner sets: a dead channel's messages, restored at once ------------------------------


def tags_of(messages: list[Any]) -> set[str]:
    return {m.delivery_tag for m in messages}


def test_fetched_tags_join_the_channels_owner_set_and_an_ack_takes_them_out(
    redis_home: Isolated,
) -> None:
    with channel_on(redis_home.url) as (conn, channel):
        assert channel.owner_key == f"unacked_owner:{channel.lease_owner}"
        for i in range(6):
            publish(channel, LEVELS[i % 4], {"n": i})
        received = consume(channel, prefetch=10)
        drain_until(conn, lambda: len(received) == 6)
        assert (
            redis_home.owned(channel)
            == tags_of(received)
            == set(t.decode() for t in redis_home.unacked())
        )
        owner_key = redis_home.key(channel.owner_key)
        ttl_ms = redis_home.raw.pttl(owner_key)
        assert 0 < ttl_ms <= OWNER_TTL_FACTOR * 1000, "refreshed at each fetch"

        channel.basic_ack_many([m.delivery_tag for m in received[:2]])
        received[2].ack()  # kombu's single ack
        received[3].reject(requeue=False)
        assert redis_home.owned(channel) == tags_of(received[4:])
        received[4].reject(requeue=True)  # kombu's restore_by_tag
        drain_until(conn, lambda: len(received) == 7)
        assert redis_home.owned(channel) == tags_of(received[5:])

        redis_home.raw.pexpire(owner_key, 50)
        channel.keep_leases([received[5].delivery_tag])
        assert redis_home.raw.pttl(owner_key) > 50, "a lease renewal keeps the set alive"
        channel.basic_ack_many([m.delivery_tag for m in received[5:]])
        assert redis_home.owned(channel) == set()
        assert not redis_home.raw.exists(owner_key)


def test_a_basic_get_without_ack_and_a_handed_back_fetch_leave_no_owned_tag(
    redis_home: Isolated,
) -> None:
    with channel_on(redis_home.url) as (conn, channel):
        publish(channel, "q", {"n": 0})
        message = channel.basic_get("q", no_ack=True)
        assert message is not None and message.payload == {"n": 0}
        assert redis_home.owned(channel) == set() and redis_home.unacked() == {}

        for i in range(5):
            publish(channel, "q", {"n": i})
        consume(channel, prefetch=10)
        conn.transport.cycle.on_poll_start()  # sends the fetch; nobody reads the reply
        wait_until(lambda: redis_home.raw.llen(redis_home.key("q")) == 0)
        assert len(redis_home.owned(channel)) == 5, "recorded with the fetch"
        owner_key = redis_home.key(channel.owner_key)
    assert redis_home.raw.llen(redis_home.key("q")) == 5, "handed back at close"
    assert not redis_home.raw.exists(owner_key)
    assert redis_home.unacked() == {}


def test_restoring_an_owner_puts_back_exactly_its_unacked_messages_once() -> None:
    redis_home = Isolated(visibility_timeout=300.0)
    try:
        with channel_on(redis_home.url) as (conn, channel):
            for i in range(6):
                publish(channel, "q", {"n": i})
            publish(channel, "q", {"n": "pri"}, priority=5)
            publish(channel, "q.low", {"n": "low"})
            received = consume(channel, prefetch=10)
            drain_until(conn, lambda: len(received) == 8)
            channel.basic_ack_many([m.delivery_tag for m in received[:2]])
            # Restored by kombu's sweep meanwhile: no longer unacked, not restored again.
            channel.qos.restore_by_tag(received[2].delivery_tag, leftmost=True)
            assert redis_home.owned(channel) == tags_of(received[3:])
            before = {k: redis_home.raw.lrange(redis_home.key(k), 0, -1) for k in ("q", "q.low")}
            owner = channel.lease_owner

            broker = Broker(redis_home.url)
            try:
                # Another process, as the cluster coordinator does for a dead worker.
                assert broker.restore_unacked([f"owner:{owner}"]) == 5
                assert broker.restore_unacked([f"owner:{owner}"]) == 0, "only once"
            finally:
                broker.close()
            assert redis_home.unacked() == {}
            assert redis_home.raw.zcard(redis_home.key("unacked_index")) == 0
            assert not redis_home.raw.exists(redis_home.key(channel.owner_key))
            back: dict[object, Any] = {}
            for key in redis_home.raw.keys(redis_home.key("q*")):
                if redis_home.raw.type(key) == b"list":
                    for item in redis_home.raw.lrange(key, 0, -1):
                        envelope = json.loads(item)
                        back[json.loads(base64.b64decode(envelope["body"]))["n"]] = envelope
            assert len(back) == 6, "the swept one and the five restored"
            for message in received[3:]:
                envelope = back[message.payload["n"]]
                assert envelope["headers"]["redelivered"] is True
                assert envelope["properties"]["delivery_info"]["redelivered"] is True
                assert envelope["properties"]["delivery_tag"] == message.delivery_tag
            assert (
                redis_home.raw.lrange(redis_home.key("q"), 0, 0)[0] == before["q"][0]
                and json.loads(before["q"][0])["properties"]["delivery_tag"]
                == received[2].delivery_tag
            ), "the swept one is still at the end read last (kombu's leftmost requeue)"
            assert set(back) == {m.payload["n"] for m in received[2:]}
            # The dead channel's own late ack or close changes nothing any more.
            channel.basic_ack_many([received[3].delivery_tag])
            assert redis_home.raw.llen(redis_home.key("q")) == 4  # n = 2 (swept), 3, 4, 5
        assert redis_home.raw.llen(redis_home.key("q")) == 4 and redis_home.unacked() == {}
    finally:
        redis_home.close()


def test_a_sigkilled_consumers_owner_restore_brings_back_even_what_it_never_reported() -> None:
    redis_home = Isolated(visibility_timeout=300.0)
    holder = _holder_script(redis_home.url, report_owner=True)
    try:
        with channel_on(redis_home.url) as (conn, channel):
            proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
            try:
                assert proc.stdout is not None
                owner = proc.stdout.readline().strip().decode()
                for i in range(8):
                    publish(channel, "q", {"n": i})
                assert proc.stdout.readline().strip() == b"held 5"
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            assert len(redis_home.unacked()) == 5
            broker = Broker(redis_home.url)
            try:
                assert broker.restore_unacked([f"owner:{owner}"]) == 5
            finally:
                broker.close()
            received = consume(channel, prefetch=10)
            drain_until(conn, lambda: len(received) == 8)
            # Restored to the front: they run before the three never taken.
            assert sorted(m.payload["n"] for m in received[:5]) == [0, 1, 2, 3, 4]
            assert [m.payload["n"] for m in received[5:]] == [5, 6, 7]
            assert all(m.delivery_info.get("redelivered") for m in received[:5])
            channel.basic_ack_many([m.delivery_tag for m in received])
    finally:
        redis_home.close()


# -- interoperating with kombu and Celery -------------------------------------------------


def test_kombus_own_sweep_restores_our_unacked_messages(redis_home: Isolated) -> None:
    with channel_on(redis_home.url, ["q"]) as (conn, channel):
        publish(channel, "q", {"n": "from-us", "blob": "x" * 3000})
        received = consume(channel, prefetch=5, queues=["q"])
        drain_until(conn, lambda: len(received) == 1)
        stock = Connection(
            f"redis://{REDIS_HOST}/{REDIS_DB}",
            transport_options={"global_keyprefix": redis_home.prefix, "visibility_timeout": 1},
        )
        try:
            stock_channel = stock.default_channel
            assert type(stock_channel).__module__ == "kombu.transport.redis"

            def restored() -> bool:
                stock_channel.qos.restore_visible(num=10, interval=1)
                return redis_home.raw.llen(redis_home.key("q")) == 1

            wait_until(restored, timeout=10, interval=0.1)
            assert redis_home.unacked() == {}
            message = stock_channel.basic_get("q", no_ack=True)
            assert message.payload == {"n": "from-us", "blob": "x" * 3000}
            assert message.delivery_info.get("redelivered")
        finally:
            stock.release()


def test_a_celery_producers_message_is_consumed(uno_home: Path, queue_name: str) -> None:
    celery = pytest.importorskip("celery")
    home = Isolated(visibility_timeout=5.0)
    app = celery.Celery("redis-channel-test", set_as_current=False)
    app.conf.broker_url = f"redis://{REDIS_HOST}/{REDIS_DB}"
    app.conf.broker_transport_options = {"global_keyprefix": home.prefix}

    async def main() -> None:
        queue = Queue(queue_name, broker_url=home.url)
        worker = get_worker_type("async")(
            queue_name=queue_name, broker_url=home.url, store_url=queue.store_url
        )
        try:
            sent = app.send_task("contract.add", args=[2, 3], queue=queue_name)
            await worker.start()
            store = queue.store

            def finished() -> bool:
                record = store.get(sent.id)
                return record is not None and record.finished

            await async_wait_until(finished, timeout=15)
            record = store.get(sent.id)
            assert record is not None and record.result == 5
        finally:
            await worker.shutdown(wait=False)
            await queue.delete()
            queue.close()

    try:
        run(main)
    finally:
        app.close()
        home.close()


# -- the script's lifecycle ---------------------------------------------------------------


def test_a_script_redis_no_longer_knows_is_loaded_again(redis_home: Isolated) -> None:
    real_sha = hashlib.sha1(FETCH_SCRIPT.encode()).hexdigest()
    unknown = hashlib.sha1(f"never loaded {uuid.uuid4()}".encode()).hexdigest()
    with channel_on(redis_home.url) as (conn, channel):
        received = consume(channel, prefetch=10)
        publish(channel, "q", {"n": 0})
        drain_until(conn, lambda: len(received) == 1)
        assert channel._fetch_sha == real_sha, "loaded once, on first use"

        channel._fetch_sha = unknown  # what a restarted Redis would answer NOSCRIPT to
        publish(channel, "q", {"n": 1})
        drain_until(conn, lambda: len(received) == 2)
        assert channel._fetch_sha == real_sha

        channel._fetch_sha = unknown
        publish(channel, "q.low", {"n": 2})
        message = channel.basic_get("q.low")
        assert message is not None and message.payload == {"n": 2}
        assert channel._fetch_sha == real_sha
        message.ack()

        channel._fetch_sha = None
        publish(channel, "q", {"n": 3})
        drain_until(conn, lambda: len(received) == 3)
        assert [m.payload["n"] for m in received] == [0, 1, 3]
        assert channel._fetch_sha == real_sha


def test_every_redis_url_uses_this_transport() -> None:
    for url in ("redis://127.0.0.1:6379/3", "rediss://h:6380/0"):
        conn = parse_broker_url(url).connection()
        try:
            assert conn.transport_cls is Transport
            assert conn.ssl == ({"ssl_cert_reqs": CERT_NONE} if url.startswith("rediss") else False)
        finally:
            conn.release()
