"""The Prometheus exporter plugin with real workers on the embedded broker.

Workers are created with ``metrics_exporters=["prometheus"]`` (the CLI: ``--metrics-exporter
prometheus``); the endpoint listens on a port the system chooses and is scraped over HTTP,
parsed with prometheus-client's parser. Metric families are process-wide: every test
labels its series with its own queue name.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import prometheus_client
import prometheus_tasks
import pytest
from conftest import async_wait_until, wait_until
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from uno_jobs_prometheus import MULTIPROC_ENV, PrometheusExporter, exporter_for

from uno_jobs import AsyncWorker, JobFailedError, ProcessPoolWorker, Queue
from uno_jobs.worker import BaseWorker

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REPO = HERE.parent.parent

Families = dict[str, Metric]


def run(main: Callable[[], Any]) -> None:
    asyncio.run(main())


def scrape_sync(url: str) -> Families:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


async def scrape(exporter: PrometheusExporter) -> Families:
    return await asyncio.to_thread(scrape_sync, exporter.url)


def value(families: Families, family: str, sample: str, **labels: str) -> float | None:
    if family not in families:
        return None
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def processed(families: Families, queue: str, task: str, outcome: str) -> float | None:
    return value(
        families,
        "uno_jobs_processed",
        "uno_jobs_processed_total",
        queue=queue,
        task=task,
        outcome=outcome,
    )


async def scrape_until(
    exporter: PrometheusExporter, check: Callable[[Families], bool], timeout: float = 20.0
) -> Families:
    """Scrape until ``check`` holds for what the endpoint serves; returns that scrape."""
    deadline = time.monotonic() + timeout
    while True:
        got = await scrape(exporter)
        if check(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"no scrape within {timeout} s satisfied {check}")
        await asyncio.sleep(0.05)


def the_exporter(worker: BaseWorker) -> PrometheusExporter:
    exporter = exporter_for(worker)
    assert exporter is not None, f"{worker} started no prometheus exporter"
    return exporter


def test_an_async_worker_exports_its_jobs(uno_home: Path, queue_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        queue = Queue(queue_name, broker_url="embedded://", metrics_exporters=["prometheus"])
        worker = AsyncWorker(
            queue_name=queue_name,
            broker_url="embedded://",
            metrics_exporters=["prometheus"],
            metrics_interval=0.1,
        )
        worker.settings = {"prometheus_port": 0}
        q = {"queue": queue_name}
        try:
            await worker.start()
            exporter = the_exporter(worker)
            assert exporter.address[0] == "127.0.0.1"
            adds = [await queue.enqueue("prom.add", [i, 1]) for i in range(3)]
            failing = await queue.enqueue("prom.fail")
            flaky = await queue.enqueue("prom.flaky", [str(tmp_path)], priority="high")
            unknown = await queue.enqueue("no_such_task")  # no dot: not a module path
            assert [await job.wait(timeout=20) for job in adds] == [1, 2, 3]
            assert await flaky.wait(timeout=20) == "ok"
            for job in (failing, unknown):
                with pytest.raises(JobFailedError):
                    await job.wait(timeout=20)

            # Outcomes are counted as the worker records them: wait for the last one.
            got = await scrape_until(
                exporter, lambda got: processed(got, queue_name, "prom.fail", "failed") == 1
            )
            assert processed(got, queue_name, "prom.add", "succeeded") == 3
            assert processed(got, queue_name, "prom.flaky", "retried") == 1
            assert processed(got, queue_name, "prom.flaky", "succeeded") == 1
            dead = "uno_jobs_dead_lettered_total"
            assert value(got, "uno_jobs_dead_lettered", dead, reason="unknown_task", **q) == 1
            enqueued = "uno_jobs_enqueued_total"
            for task, level, count in (("prom.add", "normal", 3), ("prom.flaky", "high", 1)):
                assert value(got, "uno_jobs_enqueued", enqueued, task=task, level=level, **q) == (
                    count
                )
            duration, wait = "uno_jobs_job_duration_seconds", "uno_jobs_queue_wait_seconds"
            assert value(got, duration, f"{duration}_count", task="prom.add", **q) == 3
            assert value(got, wait, f"{wait}_count", task="prom.add", **q) == 3
            assert value(got, wait, f"{wait}_bucket", task="prom.add", le="+Inf", **q) == 3
            running = got["uno_jobs_in_progress"].samples
            assert sum(s.value for s in running if s.labels["queue"] == queue_name) == 0
            assert value(got, "uno_jobs_worker_up", "uno_jobs_worker_up", **q) == 1

            # Queue depth, per level, from the broker: jobs wait while the worker is paused.
            def low_depth(got: Families) -> float | None:
                depth = "uno_jobs_queue_depth"
                return value(got, depth, depth, level="low", **q)

            await worker.pause()
            for _ in range(2):
                await queue.enqueue("prom.add", [0, 0], priority="low")
            await scrape_until(exporter, lambda got: low_depth(got) == 2)
            await worker.resume()
            await scrape_until(exporter, lambda got: low_depth(got) == 0)
        finally:
            await worker.shutdown()
            await queue.delete()
            queue.close()
        assert exporter_for(worker) is None
        registry = prometheus_client.REGISTRY
        assert registry.get_sample_value("uno_jobs_worker_up", q) == 0

    run(main)


def test_a_process_pool_exports_its_childrens_metrics_and_retires_their_files(
    uno_home: Path, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Children recycled after every job; what they recorded stays; their files do not."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    monkeypatch.setenv(MULTIPROC_ENV, str(directory))
    # The worker process defines the task's metrics too (as a module-level definition
    # would): the scrape must still show one family for each, with the children's counts.
    prometheus_tasks.task_metrics()
    jobs = 12

    async def main() -> None:
        queue = Queue(queue_name, broker_url="embedded://")
        worker = ProcessPoolWorker(
            queue_name=queue_name,
            broker_url="embedded://",
            metrics_exporters=["prometheus"],
            max_processes=2,
            max_tasks_per_child=1,
        )
        worker.settings = {"prometheus_port": 0}
        label = {"label": queue_name}
        try:
            await worker.start()
            exporter = the_exporter(worker)
            assert exporter.children_directory == str(directory)
            handles = [await queue.enqueue("prom.work", [queue_name]) for _ in range(jobs)]
            pids = {await handle.wait(timeout=60) for handle in handles}
            assert len(pids) == jobs  # a new child for every job

            def files_of_job_children() -> list[str]:
                # Each of these children exits after its job; its files must go then.
                names = os.listdir(directory)
                return [n for n in names for pid in pids if n.endswith(f"_{pid}.db")]

            await async_wait_until(lambda: not files_of_job_children(), timeout=30)
            got = await scrape(exporter)
            assert processed(got, queue_name, "prom.work", "succeeded") == jobs
            assert value(got, "uno_test_task_jobs", "uno_test_task_jobs_total", **label) == jobs
            seconds = "uno_test_task_seconds"
            assert value(got, seconds, f"{seconds}_count", **label) == jobs
            assert value(got, seconds, f"{seconds}_bucket", le="0.1", **label) == 0
            # Every child that ran a job has exited: no live gauge of theirs remains.
            assert value(got, "uno_test_task_live", "uno_test_task_live", **label) in (None, 0)
            assert [f.name for f in got.values()].count("uno_test_task_jobs") == 1
            # What remains: one archive per type, and files of live processes only.
            files = [n for n in os.listdir(directory) if n.endswith(".db")]
            owners = {n[: -len(".db")].rsplit("_", 1)[1] for n in files}
            assert owners <= {"archive"} | {str(pid) for pid in worker.child_pids}, files
            assert len(glob.glob(str(directory / "*_archive.db"))) == 2  # counter, histogram
        finally:
            await worker.shutdown()
            await queue.delete()
            queue.close()

    run(main)


def test_the_cli_process_worker_writes_multiprocess_files_from_its_start(
    uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    """``--metrics-exporter prometheus --prometheus-port 0`` with ``--type process``.

    The worker process itself is in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` was set
    before its first import of prometheus-client), in a private directory removed at exit.
    """
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["UNO_JOBS_HOME"] = str(uno_home)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uno_jobs.cli",
                "worker",
                "--app",
                "prometheus_tasks",
                "--queue",
                queue_name,
                "--type",
                "process",
                "--concurrency",
                "2",
                "--metrics-exporter",
                "prometheus",
                "--prometheus-port",
                "0",
            ],
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    queue = Queue(queue_name)
    pattern = re.compile(r"on (http://127\.0\.0\.1:\d+/metrics) \(multiprocess directory (\S+)\)")
    try:

        def announced() -> re.Match[str] | None:
            assert worker.poll() is None, log_path.read_text()
            return pattern.search(log_path.read_text())

        wait_until(announced, timeout=60)
        match = announced()
        assert match is not None
        url, directory = match.group(1), match.group(2)
        handles = [queue.enqueue_sync("prom.work", [queue_name]) for _ in range(4)]
        handles.append(queue.enqueue_sync("prom.add", [2, 3]))
        results = [handle.wait_sync(timeout=60) for handle in handles]
        assert results[-1] == 5
        label = {"label": queue_name}

        def counted() -> bool:
            got = scrape_sync(url)
            return processed(got, queue_name, "prom.add", "succeeded") == 1

        wait_until(counted, timeout=20)
        got = scrape_sync(url)
        assert processed(got, queue_name, "prom.work", "succeeded") == 4
        assert value(got, "uno_test_task_jobs", "uno_test_task_jobs_total", **label) == 4
        assert value(got, "uno_jobs_worker_up", "uno_jobs_worker_up", queue=queue_name) == 1
        # The worker process's own values are in the directory, in files named by its pid.
        own = glob.glob(os.path.join(directory, f"counter_{worker.pid}.db"))
        assert own, os.listdir(directory)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        asyncio.run(queue.delete())
        queue.close()
    assert worker.returncode == 0, log_path.read_text()
    assert not Path(directory).exists()
