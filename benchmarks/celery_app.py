"""The Celery app of the benchmark, configured from the environment the runner sets.

Worker: ``celery -A benchmarks.celery_app worker -P solo -c 1 -Q <queue>
--without-heartbeat --without-gossip --without-mingle``.

Settings: late acks (as uno_jobs), results ignored and no result backend, remote control
off (no pidbox queue left behind). On RabbitMQ ``worker_prefetch_multiplier=25``: at the
default of 4 the solo worker stalls for 10-20 s at a time on this machine. On Redis the
run's key prefix is kombu's ``global_keyprefix``.

Environment: ``BENCH_BROKER_URL``, ``BENCH_QUEUE``, ``BENCH_KEY_PREFIX`` (Redis), and
the completion counter's ``BENCH_JOBS``, ``BENCH_DONE_KEY``, ``BENCH_REDIS_URL``.

``python -m benchmarks.celery_app N`` sends N no-op jobs with ``send_task`` and prints the
elapsed seconds as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import Celery

from benchmarks._completion import from_environment

TASK_NAME = "bench.noop"
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
    else:
        settings["worker_prefetch_multiplier"] = 25
    return settings


app = Celery("bench", broker=BROKER_URL)
app.conf.update(_settings())
_completion = from_environment()


@app.task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def noop() -> None:
    """Do nothing but count."""
    if _completion is not None:
        _completion.job_started()
        _completion.job_finished()


def send(jobs: int) -> float:
    """Send ``jobs`` no-op jobs to ``QUEUE``; returns the elapsed seconds."""
    t0 = time.perf_counter()
    for _ in range(jobs):
        app.send_task(TASK_NAME, queue=QUEUE)
    return time.perf_counter() - t0


if __name__ == "__main__":
    count = int(sys.argv[1])
    print(json.dumps({"seconds": send(count), "jobs": count}), flush=True)
