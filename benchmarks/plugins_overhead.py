"""Throughput with ten no-op plugins installed against none, in the same run.

Ten fake distributions (dist-info folders with ``uno_jobs`` entry points, each plugin
implementing every hook as a no-op) are written to a temporary folder; "installed" runs
put it on ``sys.path`` so ``importlib.metadata`` finds them exactly as it finds plugins
installed with pip. Each configuration drains the same number of pre-queued no-op jobs
with one ``AsyncWorker``; rounds alternate the two and the medians are compared.

    .venv/bin/python benchmarks/plugins_overhead.py [--jobs 5000] [--rounds 5] [--broker URL]

Target (issue "Plugins"): ten plugins within 5% of none.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from uno_jobs import Queue, task
from uno_jobs.config import PluginSettings
from uno_jobs.plugins import Plugins, get_plugins, reset_plugins
from uno_jobs.queue import JobSpec
from uno_jobs.worker import AsyncWorker

PLUGIN_SOURCE = """
from uno_jobs import hookimpl

@hookimpl
def uno_jobs_worker_types():
    return {}

@hookimpl
def uno_jobs_middleware():
    return {}

@hookimpl
def uno_jobs_retry_policies():
    return {}

@hookimpl
def uno_jobs_job_stores():
    return {}

@hookimpl
def uno_jobs_metrics_exporters():
    return {}

@hookimpl
def uno_jobs_add_cli_commands(subparsers):
    pass

@hookimpl
def uno_jobs_worker_boot(worker):
    pass

@hookimpl
def uno_jobs_worker_stopped(worker):
    pass

@hookimpl
def uno_jobs_child_boot():
    pass
"""


@task(name="bench.plugins_noop")
async def plugins_noop() -> None:
    return None


def write_plugins(folder: Path, count: int) -> None:
    for i in range(count):
        module = f"uno_bench_noop_plugin_{i}"
        (folder / f"{module}.py").write_text(PLUGIN_SOURCE)
        info = folder / f"uno_bench_noop_plugin_{i}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: uno-bench-noop-plugin-{i}\nVersion: 1.0\n"
        )
        (info / "entry_points.txt").write_text(f"[uno_jobs]\nnoop{i} = {module}\n")


async def drain(broker_url: str, jobs: int) -> float:
    queue = Queue(f"bench-plugins-{uuid.uuid4().hex[:8]}", broker_url=broker_url)
    try:
        for start in range(0, jobs, 1000):
            batch = [JobSpec("bench.plugins_noop") for _ in range(min(1000, jobs - start))]
            await queue.enqueue_many(batch)
        worker = AsyncWorker(
            queue_name=queue.name, broker_url=broker_url, max_concurrent=50, batch_size=100
        )
        started = time.perf_counter()
        await worker.start()
        while worker.stats.processed < jobs:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        await worker.shutdown()
        return jobs / elapsed
    finally:
        await queue.delete()
        queue.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as site:
        import os

        os.environ["UNO_JOBS_HOME"] = home
        write_plugins(Path(site), 10)
        rates: dict[str, list[float]] = {"none": [], "ten": []}
        for round_no in range(1, args.rounds + 1):
            for config in ("none", "ten") if round_no % 2 else ("ten", "none"):
                if config == "ten":
                    sys.path.insert(0, site)
                # Only the ten (or none): other installed plugins stay out of both runs.
                names = tuple(f"noop{i}" for i in range(10)) if config == "ten" else ()
                reset_plugins(Plugins(PluginSettings(autoload=False, explicit=names)))
                loaded = len(get_plugins().infos()) - 1
                rate = asyncio.run(drain(args.broker, args.jobs))
                if config == "ten":
                    sys.path.remove(site)
                rates[config].append(rate)
                print(
                    f"round {round_no}: {config:>4} plugins ({loaded} loaded): {rate:,.0f} jobs/s"
                )
        none, ten = (statistics.median(rates[k]) for k in ("none", "ten"))
        ratio = ten / none
        verdict = "PASS" if ratio >= 0.95 else "FAIL"
        print(
            f"median: none {none:,.0f}/s, ten {ten:,.0f}/s, ratio {ratio:.3f} "
            f"({verdict}: target >= 0.95)"
        )
        return 0 if ratio >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
