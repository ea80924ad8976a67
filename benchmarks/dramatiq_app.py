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
as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time

import dramatiq
from dramatiq.broker import Broker

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
    return RabbitmqBroker(url=url)


broker = _broker()
dramatiq.set_broker(broker)
_completion = from_environment()


@dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE, max_retries=0)
def noop() -> None:
    """Do nothing but count."""
    if _completion is not None:
        _completion.job_started()
        _completion.job_finished()


def send(jobs: int) -> float:
    """Send ``jobs`` no-op jobs; returns the elapsed seconds."""
    t0 = time.perf_counter()
    for _ in range(jobs):
        noop.send()
    return time.perf_counter() - t0


if __name__ == "__main__":
    count = int(sys.argv[1])
    seconds = send(count)
    broker.close()
    print(json.dumps({"seconds": seconds, "jobs": count}), flush=True)
