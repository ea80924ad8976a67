"""Enqueue-to-start latency: the recorder every system's latency task calls, the paced
sender every producer uses, and the percentiles.

A latency job carries one argument, ``sent_ns``: the producer's ``time.time_ns()`` read
immediately before its enqueue call. The task's first line records
``time.time_ns() - sent_ns`` in the worker process (the wall clock is shared by every
process of the machine; ``perf_counter`` is not) and appends it to the Redis list
``BENCH_LAT_KEY`` (``RPUSH``: a worker's children, Celery prefork's or a uno_jobs process
pool's, append to the same list; the round trip comes after the clock is read, and at one
job per 5 ms it does not queue up). The runner waits for the list to hold every job.
``sent_ns == 0`` is a ping: it only sets ``<key>:ready``, which the producer waits for
before it starts (so worker start-up is never in a latency).

Jobs are sent one at a time on a fixed schedule (``t0 + i * interval``), not with a
sleep after each send, so a slow enqueue does not stretch the spacing of the others.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

from benchmarks._resp import RespClient

__all__ = [
    "LatencyRecorder",
    "from_environment",
    "paced_send",
    "percentile",
    "wait_ready",
]

_KEY_TTL_SECONDS = 3600


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile of ``values`` (nearest rank, as latency reports use).

    Raises:
        ValueError: ``values`` is empty or ``pct`` is outside 0-100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct!r} outside 0-100")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class LatencyRecorder:
    """Appends each job's latency to a Redis list from the worker process.

    Args:
        key: Redis list of latencies (nanoseconds); ``<key>:ready`` answers pings.
        redis_url: The Redis database of the key.
    """

    def __init__(self, key: str, redis_url: str) -> None:
        self.key = key
        self._redis = RespClient(redis_url)  # not redis-py: see benchmarks._resp

    def record(self, sent_ns: int) -> None:
        """Call on the task's first line with the job's ``sent_ns`` argument."""
        now = time.time_ns()
        if sent_ns == 0:
            self._redis.command("SET", f"{self.key}:ready", 1, "EX", _KEY_TTL_SECONDS)
            return
        self._redis.command("RPUSH", self.key, now - sent_ns)


def from_environment() -> LatencyRecorder | None:
    """The recorder the runner configured (``BENCH_LAT_KEY``), or ``None``."""
    key = os.environ.get("BENCH_LAT_KEY")
    if not key:
        return None
    return LatencyRecorder(key, os.environ.get("BENCH_REDIS_URL", "redis://"))


def wait_ready(send: Callable[[int], object], timeout: float = 120.0) -> float:
    """Ping the worker (``send(0)``) until it answers; returns the seconds it took.

    A ping is sent every second, as a worker still starting may not take the first one
    promptly; extra pings are harmless (they only set the ready key again).

    Raises:
        TimeoutError: no answer within ``timeout``.
    """
    import redis  # the producer's process: its memory is not measured

    key = f"{os.environ['BENCH_LAT_KEY']}:ready"
    client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://"))
    t0 = time.monotonic()
    next_ping = t0
    try:
        while not client.exists(key):
            now = time.monotonic()
            if now > t0 + timeout:
                raise TimeoutError(f"worker did not answer a ping within {timeout:g} s")
            if now >= next_ping:
                send(0)
                next_ping = now + 1.0
            time.sleep(0.01)  # polling a key the worker sets; no event to wait on
    finally:
        client.close()
    return time.monotonic() - t0


def paced_send(
    send: Callable[[int], object], jobs: int, interval_seconds: float
) -> dict[str, float]:
    """Send ``jobs`` latency jobs one at a time, ``interval_seconds`` apart.

    ``send(sent_ns)`` is called with ``time.time_ns()`` read just before the call.
    Returns ``late_seconds``, how late at most a send started against its slot (a large
    figure means the producer itself could not keep the pace), and the p50 and p99 of
    the enqueue call's own duration in ms (``call_p50_ms``, ``call_p99_ms``): the part of
    a latency spent before the message left the producer, or waiting for its confirm.
    """
    t0 = time.perf_counter()
    worst = 0.0
    calls: list[float] = []
    for i in range(jobs):
        slot = t0 + i * interval_seconds
        wait = slot - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            worst = max(worst, -wait)
        started = time.perf_counter()
        send(time.time_ns())
        calls.append((time.perf_counter() - started) * 1e3)
    return {
        "late_seconds": worst,
        "call_p50_ms": percentile(calls, 50),
        "call_p99_ms": percentile(calls, 99),
    }
