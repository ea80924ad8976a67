"""Batch publishing on uno_jobs' own channels: Redis (one pipeline, cached binding tables,
``uno_jobs/broker/_redis_publish.py``) and the embedded broker (envelopes built by the
channel's ``publish_many``, one ``executemany`` transaction). What lands must be what
kombu's own per-message publish writes, in order; a refused push fails the whole batch and
the queue takes its job records back.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from conftest import REDIS_DB, REDIS_HOST, make_broker_url
from kombu import Connection, Exchange
from kombu.exceptions import ChannelError
from kombu.messaging import Producer

from uno_jobs import JobSpec, Queue
from uno_jobs.broker import Outgoing, _redis_publish, parse_broker_url
from uno_jobs.broker._embedded import Transport as EmbeddedTransport
from uno_jobs.broker._publisher import PublishSession
from uno_jobs.broker._topology import kombu_queue
from uno_jobs.config import embedded_broker_path
from uno_jobs.errors import BrokerUnavailableError, DuplicateJobError
from uno_jobs.message import Encoded, decode, encode, new_message
from uno_jobs.queue import REDIS_PIECE_JOBS
from uno_jobs.store import JobRecord, JobStatus, open_store
from uno_jobs.store._base import PushRefusedError

pytestmark = pytest.mark.integration

HOST, PORT = REDIS_HOST.split(":")


class RedisHome:
    """A broker URL with its own key prefix, a store URL under it, and a plain client."""

    def __init__(self) -> None:
        self.url, self._cleanup = make_broker_url("redis")
        self.prefix = parse_qs(urlsplit(self.url).query)["key_prefix"][0]
        self.store_url = f"redis://{REDIS_HOST}/{REDIS_DB}?key_prefix={self.prefix}store:"
        self.raw = redis.Redis(host=HOST, port=int(PORT), db=REDIS_DB)

    def items(self, key: str) -> list[dict[str, Any]]:
        """The envelopes of list ``key`` in the order a consumer takes them (RPOP end
        first)."""
        raw = self.raw.lrange(self.prefix + key, 0, -1)
        return [json.loads(item) for item in reversed(raw)]

    def close(self) -> None:
        self._cleanup()
        self.raw.close()


@pytest.fixture
def redis_home() -> Iterator[RedisHome]:
    home = RedisHome()
    try:
        yield home
    finally:
        home.close()


def decode_body(envelope: dict[str, Any]) -> bytes:
    """The message body of a kombu envelope (base64, as kombu's Redis channel keeps it)."""
    return base64.b64decode(envelope["body"])


def _encoded(n: int, kombu_priority: int | None = None) -> Encoded:
    enc = encode(new_message("contract.noop", [n], {}, queue="q"))
    if kombu_priority is None:
        return enc
    return dataclasses.replace(enc, properties={**enc.properties, "priority": kombu_priority})


def _kombu_publish(channel: Any, encoded: list[tuple[str, Encoded]]) -> None:
    """Publish ``encoded`` one by one through kombu's own ``Producer`` (what uno_jobs'
    batches must store exactly as)."""
    producer = Producer(channel)
    for name, enc in encoded:
        kombu_queue(name)(channel).declare()
        producer.publish(
            enc.body,
            exchange=name,
            routing_key=name,
            headers=enc.headers,
            content_type=enc.content_type,
            content_encoding=enc.content_encoding,
            delivery_mode=2,
            **enc.properties,
        )


def _without_tag(envelope: dict[str, Any]) -> dict[str, Any]:
    """An envelope without what differs per publish (kombu's random delivery tag)."""
    properties = {k: v for k, v in envelope["properties"].items() if k != "delivery_tag"}
    return {**envelope, "properties": properties}


# A batch across uno_jobs' level queues and kombu's priority sub-lists (0, 3, 6, 9 steps).
BATCH = [
    ("q", None),
    ("q.critical", None),
    ("q", 9),
    ("q.low", None),
    ("q", 4),
    ("q", None),
    ("q", 9),
    ("q.critical", 1),
    *[("q", None)] * 5,  # adjacent pushes to one list: one LPUSH of five values
]


@pytest.mark.parametrize("way", ["publish", "capture"])
def test_a_redis_batch_lands_as_kombus_own_publish_writes_it_in_order(
    redis_home: RedisHome, way: str
) -> None:
    # "capture": the commands are handed out and run by the job store's script, as
    # Queue does when its store is the broker's Redis database.
    encoded = [(name, _encoded(n, pri)) for n, (name, pri) in enumerate(BATCH)]
    session = PublishSession(parse_broker_url(redis_home.url))
    try:
        outgoing = [Outgoing(name, enc) for name, enc in encoded]
        if way == "publish":
            session.publish(outgoing)
        else:
            store = open_store(redis_home.store_url)
            store.create_and_push([], session.capture(outgoing))  # type: ignore[attr-defined]
    finally:
        session.close()
    # The same messages through kombu's stock Redis transport, one by one, under another
    # prefix: every list must hold the same envelopes in the same order.
    theirs = f"{redis_home.prefix}kombu:"
    with Connection(
        f"redis://{REDIS_HOST}/{REDIS_DB}", transport_options={"global_keyprefix": theirs}
    ) as conn:
        _kombu_publish(conn.channel(), encoded)
    keys = {
        key.decode().removeprefix(theirs)
        for key in redis_home.raw.scan_iter(match=f"{theirs}*")
        if redis_home.raw.type(key) == b"list"
    }
    assert keys == {"q", "q\x06\x163", "q\x06\x169", "q.critical", "q.low"}
    for key in keys:
        ours = redis_home.items(key)
        kombus = redis_home.items(f"kombu:{key}")
        assert [_without_tag(e) for e in ours] == [_without_tag(e) for e in kombus], key
        assert len({e["properties"]["delivery_tag"] for e in ours}) == len(ours)
    assert [e["headers"]["argsrepr"] for e in redis_home.items("q")] == [
        f"[{n}]" for n in (0, 5, 8, 9, 10, 11, 12)
    ]
    assert [e["headers"]["id"] for e in redis_home.items("q\x06\x169")] == [
        enc.headers["id"] for _, enc in (encoded[2], encoded[6])
    ]


def _declared_then_broken(queue: Queue, home: RedisHome) -> None:
    """Publish to both levels (declared, bindings cached), then make q.low not a list."""
    queue.enqueue_many_sync([JobSpec("contract.noop"), JobSpec("contract.noop", priority="low")])
    home.raw.set(home.prefix + "q.low", "not a list")


def test_a_refused_push_mid_batch_fails_the_batch_and_removes_its_job_records(
    redis_home: RedisHome,
) -> None:
    # The job store on another server: records first, then the pipelined publish.
    queue = Queue("q", broker_url=redis_home.url, store_url="memory://refused-batch")
    try:
        _declared_then_broken(queue, redis_home)
        ids = [f"batch-{n}" for n in range(3)]
        specs = [
            JobSpec("contract.noop", [1], job_id=ids[0]),
            JobSpec("contract.noop", [2], priority="low", job_id=ids[1]),
            JobSpec("contract.noop", [3], job_id=ids[2]),
        ]
        with pytest.raises(BrokerUnavailableError, match="refused 1 of the 3") as caught:
            queue.enqueue_many_sync(specs)
        assert "WRONGTYPE" in str(caught.value)
        assert [queue.store.get(job_id) for job_id in ids] == [None, None, None]
        # The next batch goes out on a fresh session.
        redis_home.raw.delete(redis_home.prefix + "q.low")
        queue.enqueue_many_sync([JobSpec("contract.noop", [4], priority="low")])
        assert [e["headers"]["argsrepr"] for e in redis_home.items("q.low")] == ["[4]"]
    finally:
        queue.close()


def test_a_refused_lone_push_removes_its_job_record(redis_home: RedisHome) -> None:
    queue = Queue("q", broker_url=redis_home.url, store_url="memory://refused-lone")
    try:
        _declared_then_broken(queue, redis_home)
        # A lone message goes out without a pipeline; its refusal is handled the same way.
        with pytest.raises(BrokerUnavailableError, match=r"refused a publish.*WRONGTYPE"):
            queue.enqueue_sync("contract.noop", priority="low", job_id="lone")
        assert queue.store.get("lone") is None
    finally:
        queue.close()


@pytest.mark.parametrize("count", [1, 3])
def test_records_and_pushes_in_one_script_are_all_or_nothing(
    redis_home: RedisHome, count: int
) -> None:
    # The job store on the broker's database: one script writes the records and pushes
    # the messages. A list that is another type of key refuses the whole batch before
    # anything is written (Redis keeps a script's writes made before a failing command).
    queue = Queue("q", broker_url=redis_home.url, store_url=redis_home.store_url)
    try:
        _declared_then_broken(queue, redis_home)
        before = redis_home.raw.llen(redis_home.prefix + "q")
        ids = [f"script-{n}" for n in range(count)]
        specs = [JobSpec("contract.noop", [n], job_id=ids[n]) for n in range(count)]
        specs[-1] = dataclasses.replace(specs[-1], priority="low")
        with pytest.raises(BrokerUnavailableError, match=r"refused a publish.*WRONGTYPE.*q\.low"):
            queue.enqueue_many_sync(specs)
        assert [queue.store.get(job_id) for job_id in ids] == [None] * count
        assert redis_home.raw.llen(redis_home.prefix + "q") == before
        # A duplicate id refuses the batch the same way: no record, no message.
        redis_home.raw.delete(redis_home.prefix + "q.low")
        queue.enqueue_sync("contract.noop", job_id="taken")
        after_first = redis_home.raw.llen(redis_home.prefix + "q")
        with pytest.raises(DuplicateJobError, match="taken"):
            queue.enqueue_many_sync(
                [JobSpec("contract.noop", [9]), JobSpec("contract.noop", job_id="taken")]
            )
        assert redis_home.raw.llen(redis_home.prefix + "q") == after_first
        # And a good batch lands whole: records and messages.
        queue.enqueue_many_sync(specs)
        assert all(queue.store.get(job_id) is not None for job_id in ids)
        assert [e["headers"]["id"] for e in redis_home.items("q.low")] == [ids[-1]]
    finally:
        queue.close()


def _count_pieces(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The jobs of each piece of the batches the store writes in pieces, from now on."""
    pieces: list[int] = []
    store: Any = queue.store
    in_pieces = store.create_and_push_pieces

    def counted(given: Any) -> None:
        def each() -> Iterator[Any]:
            for records, commands in given:
                pieces.append(len(records))
                yield records, commands

        in_pieces(each())

    monkeypatch.setattr(store, "create_and_push_pieces", counted)
    return pieces


def test_a_large_redis_batch_goes_in_pieces_and_lands_whole_in_order(
    redis_home: RedisHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pieces of REDIS_PIECE_JOBS jobs, each its own script, sent without waiting for the
    # one before: Redis runs a piece while the next is captured.
    queue = Queue("q", broker_url=redis_home.url, store_url=redis_home.store_url)
    try:
        pieces = _count_pieces(queue, monkeypatch)
        count = 2 * REDIS_PIECE_JOBS + 7
        handles = queue.enqueue_many_sync([JobSpec("contract.noop", [n]) for n in range(count)])
        assert pieces == [REDIS_PIECE_JOBS, REDIS_PIECE_JOBS, 7]
        landed = redis_home.items("q")
        assert [e["headers"]["id"] for e in landed] == [h.id for h in handles]
        assert [json.loads(decode_body(e))[0] for e in landed] == [[n] for n in range(count)]
        records = [queue.store.get(h.id) for h in handles]
        assert all(r is not None and r.status == JobStatus.QUEUED for r in records)
        # Ids of the caller's (one may exist), or messages to more than one list: the
        # batch goes as one script, all or nothing.
        pieces.clear()
        queue.enqueue_many_sync([JobSpec("contract.noop", job_id=f"own-{n}") for n in range(count)])
        mixed = [JobSpec("contract.noop", [n]) for n in range(count)]
        mixed[-1] = dataclasses.replace(mixed[-1], priority="low")
        queue.enqueue_many_sync(mixed)
        assert pieces == []
        assert len(redis_home.items("q")) == 3 * count - 1
        assert queue.store.get(f"own-{count - 1}") is not None
    finally:
        queue.close()


def test_a_batch_in_pieces_to_a_list_of_another_type_writes_nothing(
    redis_home: RedisHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every piece pushes to the same list, so every piece's type check refuses it.
    queue = Queue("q", broker_url=redis_home.url, store_url=redis_home.store_url)
    try:
        queue.enqueue_sync("contract.noop")  # declared, bindings cached
        redis_home.raw.set(redis_home.prefix + "q", "not a list")
        pieces = _count_pieces(queue, monkeypatch)
        specs = [JobSpec("contract.noop", [n]) for n in range(REDIS_PIECE_JOBS + 1)]
        with pytest.raises(BrokerUnavailableError, match=r"refused a publish.*WRONGTYPE"):
            queue.enqueue_many_sync(specs)
        assert pieces == [REDIS_PIECE_JOBS, 1]
        records = redis_home.raw.keys(f"{redis_home.prefix}store:job:*")
        assert len(records) == 1  # the one enqueued before
        assert redis_home.raw.get(redis_home.prefix + "q") == b"not a list"
    finally:
        queue.close()


def test_an_error_inside_a_redis_batch_sends_nothing(redis_home: RedisHome) -> None:
    session = PublishSession(parse_broker_url(redis_home.url))
    try:
        session.declare("q")
        producer = session._ensure()
        channel = session._channel
        with pytest.raises(RuntimeError, match="stop"), channel.publish_batch():
            producer.publish(b"{}", exchange="q", routing_key="q", content_type="x/y")
            raise RuntimeError("stop")
        assert redis_home.raw.llen(redis_home.prefix + "q") == 0
        with channel.publish_batch():
            producer.publish(b"{}", exchange="q", routing_key="q", content_type="x/y")
        assert redis_home.raw.llen(redis_home.prefix + "q") == 1
    finally:
        session.close()


def test_binding_tables_are_read_once_and_forgotten_when_this_channel_binds(
    redis_home: RedisHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    kombus = _redis_publish.kombu_redis.Channel.get_table

    def counting(channel: Any, exchange: str) -> Any:
        reads.append(exchange)
        return kombus(channel, exchange)

    monkeypatch.setattr(_redis_publish.kombu_redis.Channel, "get_table", counting)
    session = PublishSession(parse_broker_url(redis_home.url))
    try:
        session.publish([Outgoing("q", _encoded(n)) for n in range(50)])
        assert reads == ["q"]
        session.publish([Outgoing("q", _encoded(50))])
        assert reads == ["q"]
        # Another queue bound to exchange q through this channel gets the next message.
        channel = session._channel
        channel.queue_declare("q-copy")
        channel.queue_bind("q-copy", exchange="q", routing_key="q")
        session.publish([Outgoing("q", _encoded(51))])
        assert reads == ["q", "q"]
        assert redis_home.raw.llen(redis_home.prefix + "q") == 52
        assert redis_home.raw.llen(redis_home.prefix + "q-copy") == 1
        # Once its entry is older than the cache's life, the table is read again.
        monkeypatch.setattr(_redis_publish, "BINDING_CACHE_SECONDS", 0.0)
        channel.forget_bindings()
        session.publish([Outgoing("q", _encoded(52))])
        session.publish([Outgoing("q", _encoded(53))])
        assert reads == ["q", "q", "q", "q"]
    finally:
        session.close()


def test_a_deleted_binding_is_forgotten_by_the_channel_that_deleted_it(
    redis_home: RedisHome,
) -> None:
    session = PublishSession(parse_broker_url(redis_home.url))
    try:
        session.declare("q")
        channel = session._channel
        assert channel.get_table("q") == [("q", "", "q")]
        channel.queue_delete("q")
        assert channel.get_table("q") == []
    finally:
        session.close()


# -- embedded ------------------------------------------------------------------------------


def test_an_embedded_batch_is_one_transaction_in_publish_order(uno_home: Path) -> None:
    queue = Queue("q", broker_url="embedded://")
    try:
        levels = ["normal", "critical", "normal", "low", "normal"]
        specs = [JobSpec("contract.noop", [n], priority=lv) for n, lv in enumerate(levels)]
        queue.enqueue_many_sync(specs)
        spec = parse_broker_url("embedded://")
        with spec.connection() as conn:
            channel = conn.channel()
            got: dict[str, list[Any]] = {}
            for name in ("q", "q.critical", "q.low"):
                kombu_queue(name)(channel).declare()
                while (message := channel.basic_get(name, no_ack=True)) is not None:
                    got.setdefault(name, []).append(message.headers["argsrepr"])
        assert got == {"q": ["[0]", "[2]", "[4]"], "q.critical": ["[1]"], "q.low": ["[3]"]}
    finally:
        queue.close()


def test_an_error_inside_an_embedded_batch_inserts_nothing(uno_home: Path) -> None:
    session = PublishSession(parse_broker_url("embedded://"))
    try:
        session.declare("q")
        producer = session._ensure()
        channel = session._channel
        with pytest.raises(RuntimeError, match="stop"), channel.publish_batch():
            producer.publish(b"{}", exchange="q", routing_key="q", content_type="x/y")
            producer.publish(b"{}", exchange="q", routing_key="q", content_type="x/y")
            raise RuntimeError("stop")
        assert channel._size("q") == 0
        with channel.publish_batch():
            producer.publish(b"{}", exchange="q", routing_key="q", content_type="x/y")
            producer.publish(b"{}", exchange="q", routing_key="q", content_type="x/y")
        assert channel._size("q") == 2
    finally:
        session.close()


def _embedded_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every message row's envelope, by queue, in the order a consumer takes them."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT queue, payload FROM broker_messages ORDER BY id").fetchall()
    got: dict[str, list[dict[str, Any]]] = {}
    for queue, payload in rows:
        got.setdefault(queue, []).append(json.loads(payload))
    return got


def test_an_embedded_batch_lands_as_kombus_own_publish_writes_it_in_order(
    uno_home: Path, tmp_path: Path
) -> None:
    encoded = [(name, _encoded(n, pri)) for n, (name, pri) in enumerate(BATCH)]
    # A header kombu's JSON writes as a type marker, and one with a non-ASCII value.
    extra = {"when": datetime(2030, 1, 2, tzinfo=timezone.utc), "who": "Zoë"}
    encoded[1] = (encoded[1][0], dataclasses.replace(encoded[1][1], headers=extra))
    spec = parse_broker_url("embedded://")
    session = PublishSession(spec)
    try:
        session.publish([Outgoing(name, enc) for name, enc in encoded])
    finally:
        session.close()
    # The same messages through kombu's own Producer on the same transport, one by one
    # (each one is kombu's basic_publish and the channel's _put), into another file.
    theirs = tmp_path / "kombu.sqlite3"
    with Connection(transport=EmbeddedTransport, transport_options={"path": str(theirs)}) as conn:
        _kombu_publish(conn.channel(), encoded)
    ours, kombus = _embedded_rows(embedded_broker_path(spec.url)), _embedded_rows(theirs)
    assert set(ours) == set(kombus) == {"q", "q.critical", "q.low"}
    for queue in ours:
        assert [_without_tag(e) for e in ours[queue]] == [_without_tag(e) for e in kombus[queue]]
    tags = [e["properties"]["delivery_tag"] for rows in ours.values() for e in rows]
    assert len(set(tags)) == len(BATCH)
    assert all(uuid.UUID(tag).version == 4 for tag in tags)
    assert [e["headers"]["argsrepr"] for e in ours["q"]] == [
        f"[{n}]" for n, (name, _) in enumerate(BATCH) if name == "q"
    ]
    assert ours["q"][1]["properties"]["priority"] == 9  # a priority property is kept
    assert ours["q.critical"][0]["headers"]["when"] == {
        "__type__": "datetime",
        "__value__": "2030-01-02T00:00:00+00:00",
    }


def test_an_embedded_batch_is_read_back_by_a_consumer_as_the_jobs_it_was(
    uno_home: Path,
) -> None:
    queue = Queue("q", broker_url="embedded://")
    try:
        specs = [JobSpec("contract.noop", [n], {"k": "v"}) for n in range(3)]
        handles = queue.enqueue_many_sync([*specs, JobSpec("contract.noop", priority="high")])
        with parse_broker_url("embedded://").connection() as conn:
            channel = conn.channel()
            kombu_queue("q")(channel).declare()
            messages = []
            while (message := channel.basic_get("q", no_ack=True)) is not None:
                messages.append(message)
    finally:
        queue.close()
    decoded = [
        decode(m.body, m.headers, m.content_type, m.content_encoding, queue="q") for m in messages
    ]
    assert [m.id for m in decoded] == [h.id for h in handles[:3]]
    assert [(m.task, m.args, m.kwargs, m.priority) for m in decoded] == [
        ("contract.noop", [n], {"k": "v"}, "normal") for n in range(3)
    ]
    assert all(
        m.properties["correlation_id"] == d.id for m, d in zip(messages, decoded, strict=True)
    )


def test_an_embedded_batch_to_an_undeclared_or_fanout_exchange_stores_nothing(
    uno_home: Path,
) -> None:
    spec = parse_broker_url("embedded://")
    with spec.connection() as conn:
        channel = conn.channel()
        kombu_queue("q")(channel).declare()
        batch = [("q", "q", _encoded(0)), ("nowhere", "nowhere", _encoded(1))]
        with pytest.raises(ChannelError, match="no exchange 'nowhere'"):
            channel.publish_many(batch)
        Exchange("fan", type="fanout")(channel).declare()
        with pytest.raises(ChannelError, match="'fan' is a fanout exchange"):
            channel.publish_many([("q", "q", _encoded(2)), ("fan", "", _encoded(3))])
        assert channel._size("q") == 0
        channel.publish_many([("q", "q", _encoded(4)), ("", "q", _encoded(5))])
        assert channel._size("q") == 2


def test_an_embedded_batch_inside_publish_batch_is_part_of_it(uno_home: Path) -> None:
    session = PublishSession(parse_broker_url("embedded://"))
    try:
        session.declare("q")
        producer = session._ensure()
        channel = session._channel
        with pytest.raises(RuntimeError, match="stop"), channel.publish_batch():
            channel.publish_many([("q", "q", _encoded(0)), ("q", "q", _encoded(1))])
            raise RuntimeError("stop")
        assert channel._size("q") == 0
        with channel.publish_batch():
            producer.publish(b"[[], {}, null]", exchange="q", routing_key="q", content_type="x/y")
            channel.publish_many([("q", "q", _encoded(2))])
        argsreprs = []
        while (message := channel.basic_get("q", no_ack=True)) is not None:
            argsreprs.append(message.headers.get("argsrepr"))
        assert argsreprs == [None, "[2]"]
    finally:
        session.close()


def test_a_push_named_in_upper_case_is_checked_like_any_other(redis_home: RedisHome) -> None:
    # The script tests the type of an lpush's list before writing anything; the name of
    # the command must not get past that test by its spelling.
    store = open_store(redis_home.store_url)
    key = f"{redis_home.prefix}not-a-list"
    redis_home.raw.set(key, "a string")
    record = JobRecord("upper-1", "contract.noop", "q", JobStatus.QUEUED)
    with pytest.raises(PushRefusedError, match="not a list"):
        store.create_and_push([record], [("LPUSH", key, ("v",))])  # type: ignore[attr-defined]
    assert store.get("upper-1") is None
    assert redis_home.raw.get(key) == b"a string"


def test_an_amqp_publish_written_as_frames_lands_as_kombus_own_publish_writes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RabbitMQ: the session writes a publish's frames itself (``_amqp_frames``); what a
    consumer gets is what kombu's ``Producer`` sends for the same message. A message the
    frames cannot carry exactly (a kombu ``priority`` property) goes through kombu."""
    from conftest import AMQP_URL

    suffix = uuid.uuid4().hex[:8]
    ours, theirs = f"frames-ours-{suffix}", f"frames-kombu-{suffix}"
    messages = [
        encode(new_message("contract.noop", [n, "ünï ☃", {"x": [1.5, None]}], {}, queue="q"))
        for n in range(3)
    ]
    messages.append(_encoded(9, kombu_priority=3))
    through_kombu: list[str] = []
    original = PublishSession._publish_one

    def spy(producer: Any, routing_key: str, enc: Encoded) -> None:
        through_kombu.append(enc.headers["id"])
        original(producer, routing_key, enc)

    monkeypatch.setattr(PublishSession, "_publish_one", staticmethod(spy))
    session = PublishSession(parse_broker_url(AMQP_URL))
    conn = Connection(AMQP_URL)
    try:
        session.publish([Outgoing(ours, enc) for enc in messages])
        assert through_kombu == [messages[3].headers["id"]]
        channel = conn.channel()
        monkeypatch.undo()
        _kombu_publish(channel, [(theirs, enc) for enc in messages])
        got = {}
        for name in (ours, theirs):
            got[name] = []
            for _ in messages:
                message = channel.basic_get(name, no_ack=True)
                assert message is not None
                got[name].append(
                    (message.body, message.properties, message.delivery_info["routing_key"])
                )
            assert channel.basic_get(name, no_ack=True) is None
        assert [(body, props) for body, props, _ in got[ours]] == [
            (body, props) for body, props, _ in got[theirs]
        ]
        assert {key for _, _, key in got[ours]} == {ours}
        decoded = [
            decode(body, props["application_headers"], props["content_type"], queue="q")
            for body, props, _ in got[ours]
        ]
        assert [(m.id, m.args) for m in decoded] == [
            (enc.headers["id"], json.loads(enc.body)[0]) for enc in messages
        ]
    finally:
        session.close()
        channel = conn.channel()
        for name in (ours, theirs):
            channel.queue_delete(name)
            channel.exchange_delete(name)
        conn.release()
