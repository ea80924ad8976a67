"""The Celery app of the benchmark, configured from the environment the runner sets.

Worker: ``celery -A benchmarks.celery_app worker -P solo -c 1 -Q <queue>
--without-heartbeat --without-gossip --without-mingle`` (or ``-P threads -c 8``,
``-P prefork -c 1``); the solo pool on RabbitMQ with ``--prefetch-multiplier 25`` (at the
default of 4 it stalls for 10-20 s at a time on this machine; see ``_systems``).

Settings: late acks (as uno_jobs), results ignored and no result backend, remote control
off (no pidbox queue left behind). On Redis the run's key prefix is kombu's
``global_keyprefix``.

Environment: ``BENCH_BROKER_URL``, ``BENCH_QUEUE``, ``BENCH_KEY_PREFIX`` (Redis), and
the completion counter's ``BENCH_JOBS``, ``BENCH_DONE_KEY``, ``BENCH_REDIS_URL``.

``python -m benchmarks.celery_app N`` sends N no-op jobs with ``send_task`` and prints the
elapsed seconds as JSON. ``... rates N`` times N ``send_task`` calls (single) and N
``send_task`` calls through one producer held for the whole loop (bulk: Celery has no
batch publish). ``... ping`` and ``... latency N`` drive the latency task (see
``benchmarks._latency``). ``BENCH_CONFIRM=1`` turns on kombu's ``confirm_publish`` on
RabbitMQ (each publish waits for its confirm); on Redis every publish already waits for
the command's reply.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import Celery

from benchmarks import _latency
from benchmarks._completion import from_environment

TASK_NAME = "bench.noop"
LATENCY_TASK_NAME = "bench.latency"
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("BENCH_QUEUE", "bench_celery")
_KEY_PREFIX = os.environ.get("BENCH_KEY_PREFIX", "")


def _settings() -> dict[str, Any]:
    settings: dict[str, Any] = {
        "task_acks_late": True,
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": QUEUE,
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "broker_connection_retry_on_startup": True,
    }
    if BROKER_URL.startswith("redis"):
        if _KEY_PREFIX:
            settings["broker_transport_options"] = {"global_keyprefix": _KEY_PREFIX}
    elif os.environ.get("BENCH_CONFIRM") == "1":
        settings["broker_transport_options"] = {"confirm_publish": True}
    return settings


app = Celery("bench", broker=BROKER_URL)
app.conf.update(_settings())
_completion = from_environment()
_recorder = _latency.from_environment()


@app.task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def noop() -> None:
    """Do nothing but count."""
    if _completion is not None:
        _completion.job_started()
        _completion.job_finished()


@app.task(name=LATENCY_TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def latency(sent_ns: int) -> None:
    """Record the enqueue-to-start latency of this job."""
    if _recorder is not None:
        _recorder.record(sent_ns)


def send_latency(sent_ns: int) -> None:
    """Send one latency job."""
    app.send_task(LATENCY_TASK_NAME, args=(sent_ns,), queue=QUEUE)


def rates(jobs: int) -> dict[str, float]:
    """Seconds for ``jobs`` single sends and ``jobs`` sends through one held producer."""
    app.send_task(TASK_NAME, queue=QUEUE)  # connect and declare outside the timings
    out = {"single": send(jobs)}
    with app.producer_or_acquire() as producer:
        t0 = time.perf_counter()
        for _ in range(jobs):
            app.send_task(TASK_NAME, queue=QUEUE, producer=producer)
        out["bulk"] = time.perf_counter() - t0
    return out


def send(jobs: int) -> float:
    """Send ``jobs`` no-op jobs to ``QUEUE``; returns the elapsed seconds."""
    t0 = time.perf_counter()
    for _ in range(jobs):
        app.send_task(TASK_NAME, queue=QUEUE)
    return time.perf_counter() - t0


def _main(argv: list[str]) -> dict[str, Any]:
    if argv[0] == "rates":
        return rates(int(argv[1]))
    if argv[0] == "ping":
        return {"ready_seconds": _latency.wait_ready(send_latency)}
    if argv[0] == "latency":
        send_latency(0)  # connect outside the timings
        return _latency.paced_send(send_latency, int(argv[1]), 0.005)
    count = int(argv[0])
    return {"seconds": send(count), "jobs": count}


if __name__ == "__main__":
    print(json.dumps(_main(sys.argv[1:])), flush=True)
