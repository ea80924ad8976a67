# mypy: disallow-untyped-calls=False
# (kombu and Dramatiq's broker classes are only partly typed; this module calls them.)
"""Subprocess entry for the raw kombu baseline; prints one JSON object on stdout.

``python -m benchmarks.kombu_runner --broker URL --queue Q --jobs N [--key-prefix P]
[--prefetch 100,150]``

For each prefetch count: publish N small JSON messages with headers (``Producer.publish``,
no publisher confirms), then consume them with a ``Consumer`` of that ``prefetch_count``
whose callback acks each message, driven by ``connection.drain_events``. The queue is
declared as Celery and uno_jobs declare theirs (durable direct exchange of the same name),
messages are persistent (kombu's default), and the queue is deleted at the end.

``--serve``: a consumer (prefetch 100, acks each message) that hands each message's first
argument to ``benchmarks._latency`` until SIGTERM; ``--ping`` and ``--latency`` publish
latency messages with ``confirm_publish`` (the enqueue-to-start floor of the transport).

``--rates``: only publish, N messages without confirms and N with kombu's
``confirm_publish`` (RabbitMQ: each publish waits for its confirm; Redis: every publish
waits for the command's reply anyway), and report both times.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
import uuid
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.entity import Queue as KombuQueue
from kombu.messaging import Consumer, Producer

from benchmarks import _latency

_BODY: list[Any] = [[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
_DRAIN_TIMEOUT_SECONDS = 30.0


def _connection(url: str, key_prefix: str | None, confirm: bool = False) -> Connection:
    options: dict[str, Any] = {"confirm_publish": True} if confirm else {}
    if url.startswith("redis") and key_prefix:
        options["global_keyprefix"] = key_prefix
    return Connection(url, transport_options=options, connect_timeout=5)


def publish(conn: Connection, queue: KombuQueue, jobs: int) -> float:
    """Publish ``jobs`` messages; returns the elapsed seconds."""
    channel = conn.channel()
    try:
        queue(channel).declare()
        producer = Producer(channel, exchange=queue.exchange, routing_key=queue.routing_key)
        t0 = time.perf_counter()
        for _ in range(jobs):
            job_id = str(uuid.uuid4())
            producer.publish(
                _BODY,
                serializer="json",
                headers={"lang": "py", "task": "bench.noop", "id": job_id, "root_id": job_id},
            )
        return time.perf_counter() - t0
    finally:
        channel.close()


def consume(conn: Connection, queue: KombuQueue, jobs: int, prefetch: int) -> float:
    """Consume and ack ``jobs`` messages one by one; returns the elapsed seconds."""
    received = 0

    def on_message(body: Any, message: Any) -> None:
        nonlocal received
        message.ack()
        received += 1

    channel = conn.channel()
    try:
        consumer = Consumer(
            channel,
            queues=[queue],
            callbacks=[on_message],
            accept=["json"],
            prefetch_count=prefetch,
        )
        t0 = time.perf_counter()
        with consumer:
            while received < jobs:
                conn.drain_events(timeout=_DRAIN_TIMEOUT_SECONDS)
        return time.perf_counter() - t0
    finally:
        channel.close()


def run(url: str, name: str, jobs: int, prefetches: list[int], key_prefix: str | None) -> Any:
    """Publish then consume ``jobs`` messages once per prefetch count."""
    exchange = Exchange(name, type="direct", durable=True)
    queue = KombuQueue(name, exchange, routing_key=name, durable=True)
    result: dict[str, Any] = {"jobs": jobs, "publish_seconds": []}
    with _connection(url, key_prefix) as conn:
        conn.ensure_connection(max_retries=1)
        try:
            for prefetch in prefetches:
                result["publish_seconds"].append(publish(conn, queue, jobs))
                result[f"consume_p{prefetch}_seconds"] = consume(conn, queue, jobs, prefetch)
        finally:
            channel = conn.channel()
            queue(channel).delete()
            exchange(channel).delete()
            channel.close()
    return result


def _kombu_queue(name: str) -> KombuQueue:
    exchange = Exchange(name, type="direct", durable=True)
    return KombuQueue(name, exchange, routing_key=name, durable=True)


def serve(url: str, name: str, key_prefix: str | None) -> Any:
    """Consume ``name`` and record each message's latency until SIGTERM."""
    recorder = _latency.from_environment()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    received = 0

    def on_message(body: Any, message: Any) -> None:
        nonlocal received
        if recorder is not None:
            recorder.record(int(body[0][0]))
        message.ack()
        received += 1

    queue = _kombu_queue(name)
    with _connection(url, key_prefix) as conn:
        channel = conn.channel()
        consumer = Consumer(
            channel, queues=[queue], callbacks=[on_message], accept=["json"], prefetch_count=100
        )
        with consumer:
            while not stopping:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    continue
    return {"received": received}


def send_latency(url: str, name: str, jobs: int, key_prefix: str | None, ping: bool) -> Any:
    """Ping the consumer until it answers, or send ``jobs`` latency messages 5 ms apart."""
    queue = _kombu_queue(name)
    with _connection(url, key_prefix, confirm=True) as conn:
        channel = conn.channel()
        queue(channel).declare()
        producer = Producer(channel, exchange=queue.exchange, routing_key=queue.routing_key)

        def send(sent_ns: int) -> None:
            job_id = str(uuid.uuid4())
            producer.publish(
                [[sent_ns], {}, _BODY[2]],
                serializer="json",
                headers={"lang": "py", "task": "bench.latency", "id": job_id, "root_id": job_id},
            )

        if ping:
            return {"ready_seconds": _latency.wait_ready(send)}
        send(0)
        return _latency.paced_send(send, jobs, 0.005)


def rates(url: str, name: str, jobs: int, key_prefix: str | None) -> Any:
    """Publish ``jobs`` messages unconfirmed, then ``jobs`` confirmed; the seconds of each."""
    exchange = Exchange(name, type="direct", durable=True)
    queue = KombuQueue(name, exchange, routing_key=name, durable=True)
    result: dict[str, Any] = {"jobs": jobs}
    for label, confirm in (("unconfirmed", False), ("confirmed", True)):
        with _connection(url, key_prefix, confirm) as conn:
            conn.ensure_connection(max_retries=1)
            result[label] = publish(conn, queue, jobs)
    with _connection(url, key_prefix) as conn:
        channel = conn.channel()
        queue(channel).delete()
        exchange(channel).delete()
        channel.close()
    return result


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run, print the JSON result."""
    parser = argparse.ArgumentParser(prog="benchmarks.kombu_runner")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--prefetch", default="100,150")
    parser.add_argument("--key-prefix", default=None)
    parser.add_argument("--rates", action="store_true", help="only time publishing")
    parser.add_argument("--serve", action="store_true", help="consume latency messages")
    parser.add_argument("--ping", action="store_true", help="ping the --serve consumer")
    parser.add_argument("--latency", action="store_true", help="send latency messages")
    args = parser.parse_args(argv)
    if args.serve:
        print(json.dumps(serve(args.broker, args.queue, args.key_prefix)))
        return
    if args.ping or args.latency:
        result = send_latency(args.broker, args.queue, args.jobs, args.key_prefix, args.ping)
        print(json.dumps(result))
        return
    if args.rates:
        print(json.dumps(rates(args.broker, args.queue, args.jobs, args.key_prefix)))
        return
    prefetches = [int(p) for p in args.prefetch.split(",") if p]
    print(json.dumps(run(args.broker, args.queue, args.jobs, prefetches, args.key_prefix)))


if __name__ == "__main__":
    main()
