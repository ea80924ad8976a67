"""CPU-bound jobs: ProcessPoolWorker(max_processes=2) against SyncWorker, in one run.

::

    .venv/bin/python benchmarks/cpu_bound.py [--broker URL] [--jobs 400] [--rounds 3]
        [--work-ms 5] [--processes 2] [--target 1.7]

Each job runs a pure-Python loop calibrated (in this process, before the run) to take
about ``--work-ms`` milliseconds. Per round, for each worker type in turn (the order
alternates between rounds, so drift on a shared machine hits both alike): ``--jobs`` jobs
are queued on a fresh queue, the worker starts in this process, and the time from
``start()`` returning to the completion of the last job is measured. The broker is
RabbitMQ by default (``amqp://guest:guest@127.0.0.1:5672//``); the job store is then the
embedded SQLite store under a temporary ``UNO_JOBS_HOME``. The verdict compares the median
over rounds of the per-round ratio (process rate / sync rate) with ``--target``; the exit
code is 1 on FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

from uno_jobs import JobSpec, ProcessPoolWorker, Queue, SyncWorker, task
from uno_jobs.worker import BaseWorker

TASK = "bench.cpu_bound"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


@task(name=TASK)
def spin(iterations: int) -> int:
    """Pure-Python CPU work: ``iterations`` rounds of integer arithmetic."""
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return total


def calibrate(work_ms: float) -> int:
    """Iterations of ``spin`` that take about ``work_ms`` milliseconds here."""
    iterations = 10_000
    while True:
        t0 = time.perf_counter()
        spin(iterations)
        elapsed = time.perf_counter() - t0
        if elapsed > 0.05:
            break
        iterations *= 2
    per_iteration = elapsed / iterations
    samples = []
    guess = max(1, int(work_ms / 1000 / per_iteration))
    for _ in range(20):
        t0 = time.perf_counter()
        spin(guess)
        samples.append(time.perf_counter() - t0)
    return max(1, int(guess * (work_ms / 1000) / statistics.median(samples)))


@dataclass
class Measurement:
    kind: str
    round: int
    jobs: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def make_worker(kind: str, broker: str, queue_name: str, processes: int) -> BaseWorker:
    if kind == "sync":
        return SyncWorker(queue_name=queue_name, broker_url=broker)
    return ProcessPoolWorker(queue_name=queue_name, broker_url=broker, max_processes=processes)


async def measure(
    kind: str, broker: str, jobs: int, iterations: int, processes: int, round_no: int
) -> Measurement:
    """Queue ``jobs`` jobs, then time one worker from ``start()`` to the last completion."""
    queue_name = f"bench-cpu-{uuid.uuid4().hex[:8]}"
    queue = Queue(queue_name, broker_url=broker)
    try:
        await queue.enqueue_many([JobSpec(TASK, [iterations]) for _ in range(jobs)])
        worker = make_worker(kind, broker, queue_name, processes)
        await worker.start()
        t0 = time.time()
        deadline = time.monotonic() + 600
        try:
            while worker.stats.processed < jobs:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind}: {worker.stats.processed} of {jobs} jobs")
                await asyncio.sleep(0.005)
            seconds = (worker.stats.last_completed or time.time()) - t0
            if worker.stats.failed:
                raise RuntimeError(f"{kind}: {worker.stats.failed} jobs failed")
        finally:
            await worker.shutdown()
    finally:
        await queue.delete()
        queue.close()
    return Measurement(kind, round_no, jobs, seconds)


async def run(args: argparse.Namespace, iterations: int) -> list[Measurement]:
    results = []
    for round_no in range(1, args.rounds + 1):
        kinds = ["sync", "process"] if round_no % 2 else ["process", "sync"]
        for kind in kinds:
            m = await measure(kind, args.broker, args.jobs, iterations, args.processes, round_no)
            print(
                f"round {round_no}  {kind:<8} {m.jobs} jobs in {m.seconds:6.3f} s  "
                f"{m.rate:7.1f} jobs/s",
                flush=True,
            )
            results.append(m)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--broker", default=DEFAULT_BROKER)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-ms", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--target", type=float, default=1.7)
    args = parser.parse_args(argv)

    home = tempfile.mkdtemp(prefix="uno-bench-cpu-")
    os.environ["UNO_JOBS_HOME"] = home
    os.environ.pop("UNO_JOBS_STORE_URL", None)
    iterations = calibrate(args.work_ms)
    t0 = time.perf_counter()
    spin(iterations)
    print(
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} broker={args.broker} "
        f"jobs={args.jobs} rounds={args.rounds} task={iterations} iterations "
        f"(~{1000 * (time.perf_counter() - t0):.1f} ms here) python={sys.version.split()[0]}",
        flush=True,
    )
    try:
        results = asyncio.run(run(args, iterations))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    ratios = []
    for round_no in range(1, args.rounds + 1):
        rates = {m.kind: m.rate for m in results if m.round == round_no}
        ratios.append(rates["process"] / rates["sync"])
    median = statistics.median(ratios)
    verdict = "PASS" if median >= args.target else "FAIL"
    sync_rates = [m.rate for m in results if m.kind == "sync"]
    process_rates = [m.rate for m in results if m.kind == "process"]
    print(
        f"SyncWorker median {statistics.median(sync_rates):.1f} jobs/s; "
        f"ProcessPoolWorker(max_processes={args.processes}) median "
        f"{statistics.median(process_rates):.1f} jobs/s"
    )
    print(
        f"ratios per round: {', '.join(f'{r:.2f}' for r in ratios)}; load={os.getloadavg()[0]:.2f}"
    )
    print(f"median ratio {median:.2f}: {verdict} (target >= {args.target:g})")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
