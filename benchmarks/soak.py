"""Soak: a steady load on ONE worker for a long while, and its resident memory over time.

::

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--rate 200] [--broker amqp]
        [--kind async] [--warmup-minutes 2] [--sample-seconds 10] [--max-growth 0.10]

A worker process (``benchmarks.uno_runner serve``: ``--kind`` sync, thread, async or
process) consumes a fresh queue while this process enqueues no-op jobs one by one with
``enqueue_sync`` at ``--rate`` jobs per second (on a fixed schedule). Every
``--sample-seconds`` the worker's memory is read (VmRSS and Pss of its process tree,
``benchmarks._memory``) with the queue's backlog, and a row is printed.

Growth after warm-up = (highest RSS of the samples after the warm-up - the RSS of the
first sample after it) / that first RSS. The warm-up (default: the first fifth of the
run, at most 2 minutes) is left out because imports, pools, caches and the allocator's
arenas fill during it. The exit code is 1 if growth exceeds ``--max-growth`` (10 %), if
the worker died, or if the backlog kept growing (the worker did not keep up, so the
figure would be about the backlog, not the worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks import _proc
from benchmarks._brokers import RunNames, delete_redis
from benchmarks._memory import SoakSample, growth_after_warmup, tree_memory
from benchmarks.bench_tasks import ASYNC_TASK, SYNC_TASK

__all__ = ["main"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Producer(threading.Thread):
    """Enqueues no-op jobs one by one at ``rate`` per second until stopped."""

    def __init__(self, url: str, queue_name: str, task: str, rate: float) -> None:
        super().__init__(name="soak-producer", daemon=True)
        from uno_jobs import Queue

        self.queue = Queue(queue_name, broker_url=url)
        self.task = task
        self.interval = 1.0 / rate
        self.sent = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            while not self.stopping.is_set():
                wait = t0 + self.sent * self.interval - time.perf_counter()
                if wait > 0 and self.stopping.wait(wait):
                    break
                self.queue.enqueue_sync(self.task)
                self.sent += 1
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--minutes", type=float, default=10.0)
    add("--rate", type=float, default=200.0, help="jobs enqueued per second")
    add("--broker", choices=["amqp", "redis", "embedded"], default="amqp")
    add("--kind", choices=["sync", "thread", "async", "process"], default="async")
    add("--warmup-minutes", type=float, default=None, help="default: minutes/5, at most 2")
    add("--sample-seconds", type=float, default=10.0)
    add("--max-growth", type=float, default=0.10, help="allowed RSS growth after warm-up")
    add("--redis-url", default=RunNames.redis_url)
    add("--amqp-url", default=RunNames.amqp_url)
    add("--json", type=Path, default=None, help="write the samples as JSON")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_seconds <= 0:
        parser.error("--minutes, --rate and --sample-seconds must be > 0")
    if args.warmup_minutes is None:
        args.warmup_minutes = min(2.0, args.minutes / 5)
    if not 0 <= args.warmup_minutes < args.minutes:
        parser.error("--warmup-minutes must be >= 0 and below --minutes")
    return args


def _print_row(s: SoakSample) -> None:
    print(
        f"{s.seconds:8.0f}  {s.rss_mib:8.1f}  {s.pss_mib:8.1f}  {s.backlog:8,}  {s.sent:10,}",
        flush=True,
    )


def soak(args: argparse.Namespace, names: RunNames, home: Path) -> tuple[list[SoakSample], str]:
    """Run the load; returns the samples and why it stopped early ("" if it did not)."""
    queue_name = names.queue(f"soak_{args.kind}", args.broker, 1)
    url = names.uno_url(args.broker)
    env = dict(os.environ, UNO_JOBS_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    os.environ["UNO_JOBS_HOME"] = str(home)  # this process's producer, same embedded files
    task = ASYNC_TASK if args.kind == "async" else SYNC_TASK
    cmd = [sys.executable, "-m", "benchmarks.uno_runner", "serve", "--kind", args.kind]
    cmd += ["--broker", url, "--queue", queue_name]
    worker = _proc.start(cmd, env, home / "worker.log")
    producer = _Producer(url, queue_name, task, args.rate)
    samples: list[SoakSample] = []
    stopped = ""
    t0 = time.monotonic()
    print(f"{'seconds':>8}  {'rss MiB':>8}  {'pss MiB':>8}  {'backlog':>8}  {'enqueued':>10}")
    try:
        producer.start()
        end = t0 + args.minutes * 60
        next_sample = t0
        while time.monotonic() < end:
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))  # sampling period
            next_sample += args.sample_seconds
            if worker.poll() is not None:
                stopped = f"the worker exited with code {worker.returncode}"
                break
            if producer.error is not None:
                stopped = f"enqueue failed: {producer.error!r}"
                break
            mem = tree_memory(worker.pid)
            backlog = producer.queue.size_sync()
            sample = SoakSample(
                time.monotonic() - t0, mem.rss_mib, mem.pss_mib, backlog, producer.sent
            )
            samples.append(sample)
            _print_row(sample)
    finally:
        producer.stopping.set()
        producer.join(10)
        _proc.stop(worker)
        producer.queue.close()
    return samples, stopped


def _delete_queue(names: RunNames, args: argparse.Namespace) -> None:
    import asyncio

    from uno_jobs import Queue

    queue = Queue(names.queue(f"soak_{args.kind}", args.broker, 1), names.uno_url(args.broker))
    try:
        asyncio.run(queue.delete())
    finally:
        queue.close()


def main(argv: list[str] | None = None) -> int:
    """Run the soak; returns 0 if the growth after warm-up is within the bound."""
    args = parse_args(argv)
    names = RunNames(redis_url=args.redis_url, amqp_url=args.amqp_url)
    home = Path(tempfile.mkdtemp(prefix=f"uno-soak-{names.suffix}-"))
    print(
        f"soak: {args.kind} worker on {args.broker}, {args.rate:g} jobs/s for {args.minutes:g} "
        f"min, warm-up {args.warmup_minutes:g} min, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    try:
        samples, stopped = soak(args, names, home)
    finally:
        try:
            if args.broker != "embedded":
                _delete_queue(names, args)
            if args.broker == "redis":
                delete_redis(names.redis_url, names.key_prefix)
        except Exception as exc:
            print(f"clean-up failed: {exc}", file=sys.stderr)
    growth = growth_after_warmup(samples, args.warmup_minutes * 60)
    backlog_grew = len(samples) > 2 and samples[-1].backlog > max(100.0, args.rate * 5)
    if args.json:
        doc = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "growth": growth,
            "samples": [asdict(s) for s in samples],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    failed = bool(stopped) or growth is None or growth > args.max_growth or backlog_grew
    if stopped:
        print(f"stopped early: {stopped}; worker log kept in {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    if backlog_grew:
        print(f"the worker did not keep up: {samples[-1].backlog:,} jobs waiting at the end")
    if growth is None:
        print("growth after warm-up: not measured (fewer than two samples after it)")
    else:
        base = next(s for s in samples if s.seconds >= args.warmup_minutes * 60)
        verdict = "FAIL" if growth > args.max_growth else "PASS"
        print(
            f"RSS after warm-up {base.rss_mib:.1f} MiB, highest later "
            f"{max(s.rss_mib for s in samples if s.seconds > base.seconds):.1f} MiB: growth "
            f"{growth:+.1%} ({verdict}: at most {args.max_growth:.0%}); "
            f"{samples[-1].sent:,} jobs enqueued, load {os.getloadavg()[0]:.2f}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
