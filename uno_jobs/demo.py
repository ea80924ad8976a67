"""``uno-jobs demo``: enqueue example jobs on the embedded default and process them.

It needs no server: with no broker configured the embedded broker and store under
``UNO_JOBS_HOME`` are used, so it is the first thing to run on a fresh machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import sys
import time
import uuid
from collections import Counter
from typing import Any, TextIO

from uno_jobs.errors import JobFailedError
from uno_jobs.queue import JobSpec, Queue
from uno_jobs.store import JobStatus
from uno_jobs.tasks import TaskRegistry, task
from uno_jobs.worker import AsyncWorker

__all__ = ["demo_registry", "run_demo"]

demo_registry = TaskRegistry()


@task(name="demo.checksum", registry=demo_registry)
def checksum(text: str, rounds: int) -> str:
    """CPU work in a thread: repeated SHA-256."""
    digest = text.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


@task(name="demo.fetch", registry=demo_registry)
async def fetch(url: str, latency: float) -> dict[str, Any]:
    """I/O-bound work on the event loop: pretends to fetch a page."""
    await asyncio.sleep(latency)
    return {"url": url, "status": 200, "bytes": len(url) * 100}


@task(name="demo.flaky", registry=demo_registry)
def flaky(n: int) -> int:
    """Fails for multiples of 7, to show failures being recorded."""
    if n % 7 == 0:
        raise ValueError(f"{n} is a multiple of 7")
    return n * n


async def run_demo(jobs: int = 300, concurrency: int = 50, out: TextIO = sys.stdout) -> int:
    """Enqueue ``jobs`` example jobs, process them with an AsyncWorker, print a summary."""
    # The demo's failures are on purpose; the summary reports them, one log line each would
    # only scroll the progress bar away.
    logging.getLogger("uno_jobs.worker").setLevel(logging.ERROR)
    queue_name = f"demo-{uuid.uuid4().hex[:8]}"
    queue = Queue(queue_name)
    print(f"uno_jobs demo: broker {queue._broker.spec.display}, store {queue.store_url}", file=out)
    rng = random.Random(7)
    specs = []
    for i in range(jobs):
        kind = i % 3
        if kind == 0:
            specs.append(JobSpec("demo.checksum", [f"doc-{i}", 2000]))
        elif kind == 1:
            specs.append(
                JobSpec("demo.fetch", [f"https://example.test/{i}", rng.uniform(0.01, 0.05)])
            )
        else:
            specs.append(JobSpec("demo.flaky", [i], priority="high" if i % 10 == 2 else None))
    t0 = time.perf_counter()
    handles = await queue.enqueue_many(specs)
    print(f"enqueued {len(handles)} jobs in {time.perf_counter() - t0:.2f} s", file=out)
    worker = AsyncWorker(
        queue_name=queue_name,
        worker_id="demo-worker",
        max_concurrent=concurrency,
        registry=demo_registry,
    )
    t1 = time.perf_counter()
    await worker.start()
    try:
        await _progress(worker, jobs, out)
        outcomes = await _collect(queue, handles)
    finally:
        await worker.shutdown()
        await queue.purge()
        queue.close()
    elapsed = time.perf_counter() - t1
    metrics = await worker.get_metrics()
    print("\nsummary", file=out)
    print(f"  jobs:        {jobs}", file=out)
    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD):
        print(f"  {status.value + ':':12} {outcomes.get(status.value, 0)}", file=out)
    print(f"  time:        {elapsed:.2f} s ({jobs / elapsed:.0f} jobs/s)", file=out)
    print(
        f"  run time:    avg {metrics['processing_time_avg_ms']:.1f} ms, "
        f"p95 {metrics['processing_time_p95_ms']:.1f} ms",
        file=out,
    )
    print(f"  queue wait:  avg {metrics['queue_wait_time_avg_ms']:.1f} ms", file=out)
    expected_failures = sum(1 for i in range(jobs) if i % 3 == 2 and i % 7 == 0)
    ok = outcomes.get("failed", 0) == expected_failures and sum(outcomes.values()) == jobs
    return 0 if ok else 1


async def _progress(worker: AsyncWorker, total: int, out: TextIO) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = worker.stats.processed
        bar = "#" * int(30 * done / total)
        print(f"\r  [{bar:<30}] {done}/{total}", end="", file=out, flush=True)
        if done >= total:
            break
        await asyncio.sleep(0.1)
    print(file=out)


async def _collect(queue: Queue, handles: list[Any]) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    for handle in handles:
        try:
            await handle.wait(timeout=30)
            outcomes["succeeded"] += 1
        except JobFailedError as exc:
            outcomes[exc.status] += 1
    return outcomes
