# mypy: disallow-untyped-calls=False
# (kombu and Dramatiq's broker classes are only partly typed; this module calls them.)
"""The Dramatiq broker and actor of the benchmark, configured from the environment.

Worker: ``dramatiq benchmarks.dramatiq_app -p 1 -t 8 -Q <queue>``. Dramatiq's default
middleware stays on (as a user would run it); retries are off for the no-op actor. On
Redis the broker's ``namespace`` carries the run's key prefix, so clean-up finds every
key; on RabbitMQ the actor's queue comes with Dramatiq's ``.DQ`` and ``.XQ`` queues.

Environment: ``BENCH_BROKER_URL``, ``BENCH_QUEUE``, ``BENCH_KEY_PREFIX`` (Redis), and
the completion counter's ``BENCH_JOBS``, ``BENCH_DONE_KEY``, ``BENCH_REDIS_URL``.

``python -m benchmarks.dramatiq_app N`` sends N no-op jobs and prints the elapsed seconds
as JSON; ``... rates N`` times N single sends (Dramatiq has no batch publish). ``... ping``
and ``... latency N`` drive the latency actor (``benchmarks._latency``).
``BENCH_CONFIRM=1`` makes the RabbitMQ broker ``confirm_delivery=True`` (each send waits
for its confirm); on Redis every send already waits for the script's reply.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import dramatiq
from dramatiq.broker import Broker

from benchmarks import _latency
from benchmarks._completion import from_environment

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("BENCH_QUEUE", "bench_dramatiq")
_KEY_PREFIX = os.environ.get("BENCH_KEY_PREFIX", "bench:")


def _broker() -> Broker:
    if BROKER_URL.startswith("redis"):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=BROKER_URL, namespace=f"{_KEY_PREFIX}dramatiq")
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    # pika reads the vhost "/" of kombu's "amqp://host//" as "", so spell it out.
    url = BROKER_URL[:-2] + "/%2F" if BROKER_URL.endswith("//") else BROKER_URL
    return RabbitmqBroker(url=url, confirm_delivery=os.environ.get("BENCH_CONFIRM") == "1")


broker = _broker()
dramatiq.set_broker(broker)
_completion = from_environment()
_recorder = _latency.from_environment()


@dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE, max_retries=0)
def noop() -> None:
    """Do nothing but count."""
    if _completion is not None:
        _completion.job_started()
        _completion.job_finished()


@dramatiq.actor(actor_name="bench_latency", queue_name=QUEUE, max_retries=0)
def latency(sent_ns: int) -> None:
    """Record the enqueue-to-start latency of this job."""
    if _recorder is not None:
        _recorder.record(sent_ns)


def send_latency(sent_ns: int) -> None:
    """Send one latency job."""
    latency.send(sent_ns)


def send(jobs: int) -> float:
    """Send ``jobs`` no-op jobs; returns the elapsed seconds."""
    t0 = time.perf_counter()
    for _ in range(jobs):
        noop.send()
    return time.perf_counter() - t0


def _main(argv: list[str]) -> dict[str, Any]:
    if argv[0] == "rates":
        noop.send()  # connect and declare outside the timings
        return {"single": send(int(argv[1]))}
    if argv[0] == "ping":
        return {"ready_seconds": _latency.wait_ready(send_latency)}
    if argv[0] == "latency":
        send_latency(0)  # connect outside the timings
        return _latency.paced_send(send_latency, int(argv[1]), 0.005)
    count = int(argv[0])
    return {"seconds": send(count), "jobs": count}


if __name__ == "__main__":
    result = _main(sys.argv[1:])
    broker.close()
    print(json.dumps(result), flush=True)
