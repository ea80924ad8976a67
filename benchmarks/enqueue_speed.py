"""Enqueue rates on Redis and the embedded broker: single ``enqueue_sync`` and bulk
``enqueue_many_sync`` (batches of 1,000), a few interleaved runs, medians and the
bulk/single ratio. A quick before/after check of the publish path, not the full benchmark
(``benchmarks/run.py``).

``python benchmarks/enqueue_speed.py [--single 1000] [--bulk 3000] [--runs 3]
[--redis redis://127.0.0.1:6379/4] [--brokers redis,embedded]``

Every Redis key is under a random ``bench-enq-<suffix>:`` prefix (job records too: the store
defaults to the broker's Redis) and deleted at the end; the embedded broker and its SQLite
store live in a temporary ``UNO_JOBS_HOME``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

BATCH = 1_000


def _rates(broker_url: str, single: int, bulk: int) -> tuple[float, float]:
    from uno_jobs import JobSpec, Queue

    queue = Queue(f"enq-{uuid.uuid4().hex[:8]}", broker_url=broker_url)
    try:
        queue.enqueue_sync("bench.noop")  # connect and declare outside the timings
        t0 = time.perf_counter()
        for _ in range(single):
            queue.enqueue_sync("bench.noop")
        single_rate = single / (time.perf_counter() - t0)
        specs = [JobSpec("bench.noop") for _ in range(bulk)]
        t0 = time.perf_counter()
        for start in range(0, bulk, BATCH):
            queue.enqueue_many_sync(specs[start : start + BATCH])
        bulk_rate = bulk / (time.perf_counter() - t0)
        asyncio.run(queue.delete())
    finally:
        queue.close()
    return single_rate, bulk_rate


def _delete_prefix(url: str, prefix: str) -> None:
    import redis

    client: Any = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--single", type=int, default=1_000)
    parser.add_argument("--bulk", type=int, default=3_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--brokers", default="redis,embedded", help="comma-separated")
    args = parser.parse_args()
    prefix = f"bench-enq-{uuid.uuid4().hex[:8]}:"
    home = tempfile.mkdtemp(prefix="uno-enq-")
    os.environ["UNO_JOBS_HOME"] = home
    os.environ.pop("UNO_JOBS_STORE_URL", None)
    urls = {"redis": f"{args.redis}?key_prefix={prefix}", "embedded": "embedded://"}
    brokers = {name: urls[name] for name in args.brokers.split(",")}
    import uno_jobs

    print(f"uno_jobs from {uno_jobs.__file__}")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in brokers}
    measure: Callable[[str, int, int], tuple[float, float]] = _rates
    try:
        for run in range(args.runs):
            for name, url in brokers.items():
                single, bulk = measure(url, args.single, args.bulk)
                results[name].append((single, bulk))
                print(f"run {run + 1} {name:9s} single {single:8.0f}/s  bulk {bulk:8.0f}/s")
    finally:
        _delete_prefix(args.redis, prefix)
    for name, rows in results.items():
        single = statistics.median(r[0] for r in rows)
        bulk = statistics.median(r[1] for r in rows)
        print(
            f"median {name:9s} single {single:8.0f}/s  bulk {bulk:8.0f}/s  "
            f"bulk/single {bulk / single:4.1f}x"
        )


if __name__ == "__main__":
    main()
