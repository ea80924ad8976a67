"""Completion counting for the Celery and Dramatiq workers, cheap enough to ignore.

Each no-op job increments a counter shared by the worker's processes (a
``multiprocessing.Value`` made at import, so the children that Celery's prefork pool forks
from the worker share it; its lock also serves Dramatiq's and Celery's threads). The
first job records its start time; the N-th job records its end time and
writes both to one Redis key, which the benchmark runner polls. Every 1,000 jobs the
count is written too, so a stalled run says how far it got. Per job this costs a lock
and an integer increment, not a network round trip (a Redis INCR per job would add
tens of microseconds to the peers' per-job cost and nothing to uno_jobs').

Configured from the environment the runner sets: ``BENCH_JOBS`` (N),
``BENCH_DONE_KEY`` and ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time

from benchmarks._resp import RespClient

__all__ = ["Completion", "from_environment"]

_PROGRESS_EVERY = 1_000
_KEY_TTL_SECONDS = 3600


class Completion:
    """Counts finished jobs; reports the first start and the N-th finish to Redis.

    Args:
        target: N, the number of jobs of the run.
        key: Redis key for ``{"first": t, "last": t, "count": n}``; progress goes to
            ``key + ":count"``.
        redis_url: The Redis database of the key.
    """

    def __init__(self, target: int, key: str, redis_url: str) -> None:
        self.target = target
        self.key = key
        ctx = multiprocessing.get_context("fork")
        self._count = ctx.Value("q", 0)
        self._first = ctx.Value("d", 0.0)
        self._redis = RespClient(redis_url)  # not redis-py: see benchmarks._resp

    def job_started(self) -> None:
        """Call at the start of each job (records the first one's time)."""
        if not self._first.value:
            with self._first.get_lock():
                if not self._first.value:
                    self._first.value = time.time()

    def job_finished(self) -> None:
        """Call at the end of each job."""
        with self._count.get_lock():
            self._count.value += 1
            count = self._count.value
        if count % _PROGRESS_EVERY == 0:
            self._redis.command("SET", f"{self.key}:count", count, "EX", _KEY_TTL_SECONDS)
        if count == self.target:
            done = {"first": self._first.value, "last": time.time(), "count": count}
            self._redis.command("SET", self.key, json.dumps(done), "EX", _KEY_TTL_SECONDS)


def from_environment() -> Completion | None:
    """The ``Completion`` the runner configured, or ``None`` outside a benchmark run."""
    key = os.environ.get("BENCH_DONE_KEY")
    if not key:
        return None
    return Completion(
        int(os.environ["BENCH_JOBS"]), key, os.environ.get("BENCH_REDIS_URL", "redis://")
    )
