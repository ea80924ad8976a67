"""Subprocess entry for the uno_jobs measurements; prints one JSON object on stdout.

``python -m benchmarks.uno_runner enqueue --broker URL --queue Q --jobs N --task NAME``
    enqueues N jobs with ``Queue.enqueue_many`` in batches of 1,000 and reports the time.
``python -m benchmarks.uno_runner work --kind KIND --broker URL --queue Q --jobs N``
    (KIND: sync, thread, async or process)
    starts ONE worker in this process, waits until it has processed N jobs and reports
    the time from ``start()`` to the last job's completion, then shuts down.
``python -m benchmarks.uno_runner enqueue-rates --broker URL --queue Q --jobs N``
    times N ``enqueue`` calls (awaited one by one), N ``enqueue_sync`` calls and N jobs
    through ``enqueue_many`` in batches of 1,000; every one is confirmed (see below).
``python -m benchmarks.uno_runner serve --kind KIND --broker URL --queue Q``
    runs ONE worker until SIGTERM (the latency and memory measurements).
``python -m benchmarks.uno_runner ping|latency --broker URL --queue Q --task NAME --jobs N``
    pings the worker until it answers, or sends N latency jobs 5 ms apart with
    ``enqueue_sync`` (``benchmarks._latency``).
``python -m benchmarks.uno_runner delete --broker URL --queue Q``
    deletes the queue's broker queues.

uno_jobs has no unconfirmed publish: ``enqueue`` returns once the broker has the job (on
RabbitMQ after the publisher confirm, on Redis after the command's reply, on the embedded
broker after the SQLite commit), and it writes the job's record to the store first.

The embedded broker and the SQLite job store live under ``UNO_JOBS_HOME`` (set by the
caller to a temporary folder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

from benchmarks import _latency
from uno_jobs import AsyncWorker, JobSpec, Queue, SyncWorker, ThreadPoolWorker
from uno_jobs.worker import BaseWorker, WorkerState

ENQUEUE_BATCH = 1_000
WORKER_BATCH_SIZE = 100
ASYNC_CONCURRENCY = 50
THREADS = 8
PROCESSES = 2
LATENCY_INTERVAL_SECONDS = 0.005
_POLL_SECONDS = 0.01


async def enqueue(broker: str, queue_name: str, jobs: int, task_name: str) -> dict[str, Any]:
    """Enqueue ``jobs`` no-op jobs; returns the elapsed seconds and the queue size after."""
    queue = Queue(queue_name, broker_url=broker)
    try:
        specs = [JobSpec(task_name) for _ in range(jobs)]
        t0 = time.perf_counter()
        for start in range(0, jobs, ENQUEUE_BATCH):
            await queue.enqueue_many(specs[start : start + ENQUEUE_BATCH])
        seconds = time.perf_counter() - t0
        size = await queue.size()
    finally:
        await asyncio.to_thread(queue.close)
    return {"seconds": seconds, "jobs": jobs, "size": size}


async def enqueue_rates(broker: str, queue_name: str, jobs: int, task_name: str) -> dict[str, Any]:
    """Seconds for ``jobs`` jobs by each way of enqueueing: single async, single sync, bulk."""
    queue = Queue(queue_name, broker_url=broker)
    out: dict[str, Any] = {"jobs": jobs}
    try:
        await queue.enqueue(task_name)  # connect and declare outside the timings
        t0 = time.perf_counter()
        for _ in range(jobs):
            await queue.enqueue(task_name)
        out["single_async"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(jobs):
            queue.enqueue_sync(task_name)
        out["single_sync"] = time.perf_counter() - t0
        specs = [JobSpec(task_name) for _ in range(jobs)]
        t0 = time.perf_counter()
        for start in range(0, jobs, ENQUEUE_BATCH):
            await queue.enqueue_many(specs[start : start + ENQUEUE_BATCH])
        out["bulk"] = time.perf_counter() - t0
    finally:
        await asyncio.to_thread(queue.close)
    return out


def send_latency(broker: str, queue_name: str, jobs: int, task_name: str, ping: bool) -> Any:
    """Ping the worker until it answers, or send ``jobs`` latency jobs 5 ms apart."""
    queue = Queue(queue_name, broker_url=broker)

    def send(sent_ns: int) -> None:
        queue.enqueue_sync(task_name, [sent_ns])

    try:
        if ping:
            return {"ready_seconds": _latency.wait_ready(send)}
        send(0)  # connect outside the timings (a ping is ignored by the recorder)
        return _latency.paced_send(send, jobs, LATENCY_INTERVAL_SECONDS)
    finally:
        queue.close()


async def serve(kind: str, broker: str, queue_name: str) -> dict[str, Any]:
    """Run one worker until SIGTERM or SIGINT."""
    from benchmarks import bench_tasks  # noqa: F401  (registers the tasks)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = _make_worker(kind, broker, queue_name)
    await worker.start()
    await stop.wait()
    await worker.shutdown()
    return {"processed": worker.stats.processed}


def _make_worker(kind: str, broker: str, queue_name: str) -> BaseWorker:
    if kind == "sync":
        return SyncWorker(queue_name=queue_name, broker_url=broker, batch_size=WORKER_BATCH_SIZE)
    if kind == "thread":
        return ThreadPoolWorker(
            queue_name=queue_name,
            broker_url=broker,
            batch_size=WORKER_BATCH_SIZE,
            max_threads=THREADS,
        )
    if kind == "process":
        from uno_jobs.worker import ProcessPoolWorker  # not loaded by the other kinds

        return ProcessPoolWorker(
            queue_name=queue_name,
            broker_url=broker,
            batch_size=WORKER_BATCH_SIZE,
            max_processes=PROCESSES,
        )
    return AsyncWorker(
        queue_name=queue_name,
        broker_url=broker,
        batch_size=WORKER_BATCH_SIZE,
        max_concurrent=ASYNC_CONCURRENCY,
    )


async def work(
    kind: str, broker: str, queue_name: str, jobs: int, timeout: float
) -> dict[str, Any]:
    """Run one worker until it has processed ``jobs`` jobs; returns the timings.

    ``seconds`` runs from the call of ``start()`` to the completion of the last job
    (``stats.last_completed``, so the polling interval here does not blur it).

    Raises:
        RuntimeError: the worker stopped, failed a job, or did not finish in ``timeout``.
    """
    from benchmarks import bench_tasks  # registers the tasks in this process

    worker = _make_worker(kind, broker, queue_name)
    t0 = time.time()
    await worker.start()
    started = time.time()
    deadline = time.monotonic() + timeout
    stats = worker.stats
    try:
        while stats.processed < jobs:
            if worker.state == WorkerState.STOPPED:
                raise RuntimeError(f"worker stopped after {stats.processed} of {jobs} jobs")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {stats.processed} of {jobs} jobs after {timeout:g} s")
            await asyncio.sleep(_POLL_SECONDS)
        last = stats.last_completed or time.time()
    finally:
        t_stop = time.perf_counter()
        await worker.shutdown()
        shutdown_seconds = time.perf_counter() - t_stop
    if stats.failed:
        raise RuntimeError(f"{stats.failed} no-op job(s) failed")
    first = bench_tasks.first_call()
    return {
        "seconds": last - t0,
        "start_seconds": started - t0,
        "first_to_last_seconds": None if first is None else last - first,
        "shutdown_seconds": shutdown_seconds,
        "processed": stats.processed,
        "jobs": jobs,
    }


async def delete(broker: str, queue_name: str) -> dict[str, Any]:
    """Delete the queue's broker queues (every level and the dead letters)."""
    queue = Queue(queue_name, broker_url=broker)
    try:
        await queue.delete()
    finally:
        await asyncio.to_thread(queue.close)
    return {"deleted": queue_name}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run one action, print its JSON result."""
    parser = argparse.ArgumentParser(prog="benchmarks.uno_runner")
    parser.add_argument(
        "action", choices=["enqueue", "enqueue-rates", "work", "serve", "ping", "latency", "delete"]
    )
    parser.add_argument("--broker", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--task", default="bench.noop")
    parser.add_argument("--kind", choices=["sync", "thread", "async", "process"], default="sync")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.action == "enqueue":
        result = asyncio.run(enqueue(args.broker, args.queue, args.jobs, args.task))
    elif args.action == "enqueue-rates":
        result = asyncio.run(enqueue_rates(args.broker, args.queue, args.jobs, args.task))
    elif args.action == "work":
        result = asyncio.run(work(args.kind, args.broker, args.queue, args.jobs, args.timeout))
    elif args.action == "serve":
        result = asyncio.run(serve(args.kind, args.broker, args.queue))
    elif args.action in ("ping", "latency"):
        ping = args.action == "ping"
        result = send_latency(args.broker, args.queue, args.jobs, args.task, ping)
    else:
        result = asyncio.run(delete(args.broker, args.queue))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
