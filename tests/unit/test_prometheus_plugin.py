"""The Prometheus exporter plugin (plugins/uno-jobs-prometheus), driven by its job events.

No broker: workers are built on kombu's in-memory transport and never started; the
exporter's endpoint is scraped over HTTP and parsed with prometheus-client's parser.
Metric families are process-wide, so every test labels its series with a queue name of
its own. Multiprocess files are written with prometheus-client's own value class under a
made-up process id, as a child would write them.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import uno_jobs_prometheus
from conftest import wait_until
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from uno_jobs_prometheus import (
    ENV_HOST,
    ENV_PORT,
    MULTIPROC_ENV,
    ExporterSettings,
    ProducerMetrics,
    PrometheusExporter,
    create_exporter,
    exporter_for,
)
from uno_jobs_prometheus._files import CombinedCollector, DirectoryCollector, retire_process

from uno_jobs import AsyncWorker, ProcessPoolWorker, Queue
from uno_jobs.broker import Broker
from uno_jobs.errors import ConfigurationError, WorkerStateError
from uno_jobs.plugins import get_plugins

REPO = Path(__file__).resolve().parents[2]

Families = dict[str, Metric]


def scrape(url: str) -> Families:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: Families, family: str, sample: str, **labels: str) -> float | None:
    """The value of one sample (``None``: absent)."""
    if family not in families:
        return None
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def registry_value(name: str, **labels: str) -> float | None:
    return prometheus_client.REGISTRY.get_sample_value(name, labels)


@pytest.fixture
def queue_name() -> str:
    return f"prom-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_exporter(queue_name: str) -> Iterator[Callable[..., PrometheusExporter]]:
    """Builds an exporter for an unstarted AsyncWorker on port 0; stops it at the end."""
    made: list[PrometheusExporter] = []

    def make(port: int = 0, **options: Any) -> PrometheusExporter:
        worker = AsyncWorker(queue_name=queue_name, broker_url="memory://", **options)
        worker.settings = {"prometheus_port": port}
        exporter = create_exporter(worker)
        assert isinstance(exporter, PrometheusExporter)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.stop()


def test_found_through_its_entry_point_and_imports_no_prometheus_client() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from uno_jobs.plugins import get_plugins
        plugins = get_plugins()
        info = next(i for i in plugins.infos() if i.name == "prometheus")
        print(json.dumps({
            "factory": plugins.lookup("metrics exporters", "prometheus").__qualname__,
            "distribution": info.distribution,
            "hooks": info.hooks,
            "imported": "prometheus_client" in sys.modules,
        }))
        """
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(found.stdout) == {
        "factory": "create_exporter",
        "distribution": "uno-jobs-prometheus",
        "hooks": [
            "uno_jobs_add_worker_options",
            "uno_jobs_child_exited",
            "uno_jobs_metrics_exporters",
        ],
        "imported": False,
    }


def test_job_events_are_counted_timed_and_served_over_http(
    make_exporter: Callable[..., PrometheusExporter], queue_name: str
) -> None:
    exporter = make_exporter()
    with pytest.raises(WorkerStateError, match="not serving"):
        _ = exporter.port
    exporter.start()
    assert exporter_for(exporter.worker) is exporter
    host, port = exporter.address
    assert host == "127.0.0.1" and port > 0
    assert exporter.url == f"http://127.0.0.1:{port}/metrics"
    q = {"queue": queue_name}

    exporter.worker_started(exporter.worker)
    exporter.job_started(queue_name, "add", 0.25)
    exporter.job_started(queue_name, "add", None)  # no enqueue time: not observed
    exporter.job_started(queue_name, "add", -1.0)  # a producer's clock ahead: counted as 0
    exporter.job_finished(queue_name, "add", "succeeded", 0.5)
    exporter.job_finished(queue_name, "add", "retried", 2.0)
    exporter.job_dead_lettered(queue_name, "no.such", "unknown_task")

    got = scrape(exporter.url)
    assert value(got, "uno_jobs_worker_up", "uno_jobs_worker_up", **q) == 1
    assert value(got, "uno_jobs_in_progress", "uno_jobs_in_progress", task="add", **q) == 1
    processed = "uno_jobs_processed_total"
    for outcome, count in (("succeeded", 1), ("retried", 1), ("failed", None)):
        assert value(got, "uno_jobs_processed", processed, task="add", outcome=outcome, **q) == (
            count
        )
    duration = "uno_jobs_job_duration_seconds"
    assert value(got, duration, f"{duration}_count", task="add", **q) == 2
    assert value(got, duration, f"{duration}_sum", task="add", **q) == 2.5
    assert value(got, duration, f"{duration}_bucket", task="add", le="1.0", **q) == 1
    wait = "uno_jobs_queue_wait_seconds"
    assert value(got, wait, f"{wait}_count", task="add", **q) == 2
    assert value(got, wait, f"{wait}_sum", task="add", **q) == 0.25
    assert value(got, wait, f"{wait}_bucket", task="add", le="0.005", **q) == 1
    dead = "uno_jobs_dead_lettered_total"
    assert value(got, "uno_jobs_dead_lettered", dead, reason="unknown_task", **q) == 1
    # Never a job id, and no task label on dead letters (their task name is untrusted).
    labels = {k for family in got.values() for s in family.samples for k in s.labels}
    assert "job_id" not in labels and "id" not in labels
    assert all("task" not in s.labels for s in got["uno_jobs_dead_lettered"].samples)

    # A job still running at stop (abandoned) leaves no in-progress count behind.
    exporter.stop()
    assert exporter_for(exporter.worker) is None
    assert registry_value("uno_jobs_in_progress", task="add", **q) == 0
    assert registry_value("uno_jobs_worker_up", **q) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_queue_depth_is_sampled_per_level_off_the_callers_thread(
    make_exporter: Callable[..., PrometheusExporter],
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    threads: list[str] = []
    real_sizes = Broker.sizes
    broken = threading.Event()

    def sizes(self: Broker, names: list[str]) -> dict[str, int]:
        threads.append(threading.current_thread().name)
        if broken.is_set():
            raise ConnectionRefusedError("broker down (test)")
        return real_sizes(self, names)

    monkeypatch.setattr(Broker, "sizes", sizes)
    queue = Queue(queue_name, broker_url="memory://", store_url="memory://")
    try:
        for priority in ("high", "high", "normal"):
            queue.enqueue_sync("t.any", [], priority=priority)
        exporter = make_exporter(metrics_interval=0.05, priority_levels=["high", "normal"])
        exporter.start()

        def depth(level: str) -> float | None:
            got = scrape(exporter.url)
            name = "uno_jobs_queue_depth"
            return value(got, name, name, queue=queue_name, level=level)

        wait_until(lambda: depth("high") == 2 and depth("normal") == 1)
        assert depth("low") is None  # the worker does not serve that level
        assert threads and set(threads) == {f"uno-prometheus-{exporter.worker.worker_id}"}

        with caplog.at_level(logging.WARNING, logger="uno_jobs.prometheus"):
            broken.set()
            wait_until(lambda: math.isnan(depth("high") or 0.0))
            calls = len(threads)
            wait_until(lambda: len(threads) > calls + 2)  # still failing: warned once
        warnings = [r for r in caplog.records if "cannot sample the depth" in r.getMessage()]
        assert len(warnings) == 1 and "broker down (test)" in warnings[0].getMessage()
        broken.clear()
        wait_until(lambda: depth("high") == 2)
    finally:
        queue.close()


def test_a_queue_gets_producer_counts_in_the_default_registry(queue_name: str) -> None:
    queue = Queue(queue_name, broker_url="memory://", store_url="memory://")
    try:
        producer = create_exporter(queue)
        assert isinstance(producer, ProducerMetrics) and not hasattr(producer, "start")
        producer.job_enqueued(queue_name, "add", "normal")
        producer.job_enqueued(queue_name, "add", "normal")
        producer.job_enqueued(queue_name, "add", "critical")
        labels = {"queue": queue_name, "task": "add"}
        assert registry_value("uno_jobs_enqueued_total", level="normal", **labels) == 2
        assert registry_value("uno_jobs_enqueued_total", level="critical", **labels) == 1
    finally:
        queue.close()
    with pytest.raises(ConfigurationError, match="worker or a Queue, not of str"):
        create_exporter("default")  # type: ignore[arg-type]


def test_settings_come_from_the_command_line_then_the_environment() -> None:
    assert ExporterSettings.resolve({}, {}) == ExporterSettings(host="127.0.0.1", port=9464)
    env = {ENV_PORT: "9100", ENV_HOST: "0.0.0.0"}
    assert ExporterSettings.resolve({}, env) == ExporterSettings(host="0.0.0.0", port=9100)
    cli = {"prometheus_port": 0, "prometheus_host": None}
    assert ExporterSettings.resolve(cli, env) == ExporterSettings(host="0.0.0.0", port=0)
    with pytest.raises(ConfigurationError, match=f"{ENV_PORT}='http'"):
        ExporterSettings.resolve({}, {ENV_PORT: "http"})
    with pytest.raises(ConfigurationError, match="--prometheus-port=70000"):
        ExporterSettings.resolve({"prometheus_port": 70000}, {})

    parser = argparse.ArgumentParser()
    get_plugins().add_worker_options(parser)
    args = parser.parse_args(["--prometheus-port", "0", "--prometheus-host", "::1"])
    assert (args.prometheus_port, args.prometheus_host) == (0, "::1")
    with pytest.raises(SystemExit):
        parser.parse_args(["--prometheus-port", "65536"])


def test_a_port_in_use_is_an_error_naming_it(
    make_exporter: Callable[..., PrometheusExporter],
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        exporter = make_exporter(port=port)
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}"):
            exporter.start()
    finally:
        taken.close()


# -- multiprocess files ---------------------------------------------------------------------


class FakeProcess:
    """Metrics written to ``directory`` the way the process ``pid`` would write them."""

    def __init__(self, directory: Path, pid: int) -> None:
        self.directory = directory
        self.value_class: Any = values.MultiProcessValue(lambda: pid)  # type: ignore[no-untyped-call]
        self.patch = pytest.MonkeyPatch()

    def __enter__(self) -> FakeProcess:
        self.patch.setenv(MULTIPROC_ENV, str(self.directory))
        self.patch.setattr(values, "ValueClass", self.value_class)
        return self

    def __exit__(self, *exc: object) -> None:
        self.value_class.close_all_files()
        self.patch.undo()

    def record(self, jobs: int, gauge_value: float) -> None:
        Counter("t_jobs", "jobs", ["task"], registry=None).labels("a").inc(jobs)
        Histogram("t_seconds", "seconds", buckets=(1.0, 10.0), registry=None).observe(5.0)
        Gauge("t_live", "live", registry=None, multiprocess_mode="livesum").set(1)
        Gauge("t_peak", "peak", registry=None, multiprocess_mode="max").set(gauge_value)
        Gauge("t_each", "each", registry=None).set(gauge_value)  # mode "all": per process


def families_of(collector: Any) -> Families:
    return {family.name: family for family in collector.collect()}


def test_retired_processes_fold_into_an_archive_and_files_do_not_pile_up(tmp_path: Path) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    collector = DirectoryCollector(str(directory))
    live_pid = 1_000_000
    with FakeProcess(directory, live_pid) as live:
        live.record(jobs=1, gauge_value=3)
    for n, pid in enumerate(range(2_000_000, 2_000_040)):
        with FakeProcess(directory, pid) as child:
            child.record(jobs=2, gauge_value=n)
        got = families_of(collector)
        assert value(got, "t_jobs", "t_jobs_total", task="a") == 1 + 2 * (n + 1)
        assert value(got, "t_live", "t_live") == 2  # the live process and this child
        assert retire_process(str(directory), pid) == 5  # counter, histogram, 3 gauges
        got = families_of(collector)
        assert value(got, "t_jobs", "t_jobs_total", task="a") == 1 + 2 * (n + 1)
        assert value(got, "t_seconds", "t_seconds_count") == n + 2
        assert value(got, "t_seconds", "t_seconds_bucket", le="10.0") == n + 2
        assert value(got, "t_seconds", "t_seconds_bucket", le="1.0") == 0
        assert value(got, "t_live", "t_live") == 1  # the dead child's live gauge is gone
        assert value(got, "t_peak", "t_peak") == max(3, n)
        assert {s.labels["pid"] for s in got["t_each"].samples} == {str(live_pid)}
    names = sorted(os.path.basename(p) for p in glob.glob(str(directory / "*.db")))
    assert names == [
        "counter_1000000.db",
        "counter_archive.db",
        "gauge_all_1000000.db",
        "gauge_livesum_1000000.db",
        "gauge_max_1000000.db",
        "gauge_max_archive.db",
        "histogram_1000000.db",
        "histogram_archive.db",
    ]
    assert retire_process(str(directory), 2_000_000) == 0  # already retired: nothing to do


def test_combined_collector_serves_a_family_defined_in_both_processes_once(tmp_path: Path) -> None:
    directory = tmp_path / "children"
    directory.mkdir()
    with FakeProcess(directory, 3_000_000) as child:
        child.record(jobs=5, gauge_value=7)
    parent = CollectorRegistry()
    Counter("t_jobs", "jobs", ["task"], registry=parent).labels("a").inc(2)
    Gauge("t_peak", "peak", registry=parent).set(100)
    Counter("t_parent_only", "parent", registry=parent).inc()
    got = families_of(CombinedCollector(parent, str(directory)))
    assert value(got, "t_jobs", "t_jobs_total", task="a") == 7
    assert [s.name for s in got["t_jobs"].samples] == ["t_jobs_total"]  # no _created
    assert value(got, "t_peak", "t_peak") == 7  # a gauge: the children's
    assert value(got, "t_parent_only", "t_parent_only_total") == 1


def test_the_child_exited_hook_retires_the_childs_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queue_name: str
) -> None:
    directory = tmp_path / "pool"
    directory.mkdir()
    monkeypatch.setenv(MULTIPROC_ENV, str(directory))
    worker = ProcessPoolWorker(queue_name=queue_name, broker_url="memory://", max_processes=1)
    worker.settings = {"prometheus_port": 0}
    exporter = create_exporter(worker)
    assert isinstance(exporter, PrometheusExporter)
    assert exporter.children_directory == str(directory)
    with FakeProcess(directory, 4_000_000) as child:
        child.record(jobs=3, gauge_value=1)
    exporter.start()
    try:
        got = scrape(exporter.url)
        assert value(got, "t_jobs", "t_jobs_total", task="a") == 3
        get_plugins().child_exited(4_000_000)
        wait_until(lambda: not glob.glob(str(directory / "*_4000000.db")))
        got = scrape(exporter.url)
        assert value(got, "t_jobs", "t_jobs_total", task="a") == 3
        assert value(got, "t_live", "t_live") is None
        assert (directory / "counter_archive.db").exists()
    finally:
        exporter.stop()


def test_a_process_pool_worker_process_writes_multiprocess_files_from_the_start(
    tmp_path: Path,
) -> None:
    """In a fresh process: the directory is set before prometheus-client's first import."""
    script = textwrap.dedent(
        """
        import json, os, sys, urllib.request
        from uno_jobs import ProcessPoolWorker
        from uno_jobs_prometheus import create_exporter

        worker = ProcessPoolWorker(queue_name="mp-probe", broker_url="memory://")
        worker.settings = {"prometheus_port": 0}
        assert "prometheus_client" not in sys.modules
        exporter = create_exporter(worker)
        from prometheus_client import values
        from prometheus_client_parser_probe import parse
        exporter.start()
        exporter.worker_started(worker)
        exporter.job_started("mp-probe", "add", 0.1)
        exporter.job_finished("mp-probe", "add", "succeeded", 0.2)
        with urllib.request.urlopen(exporter.url) as response:
            families = parse(response.read().decode())
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        print(json.dumps({
            "directory": directory,
            "children": exporter.children_directory,
            "files": values.ValueClass is not values.MutexValue,
            "own_files": sorted(f for f in os.listdir(directory) if str(os.getpid()) in f),
            "processed": families["uno_jobs_processed_total"],
            "up": families["uno_jobs_worker_up"],
        }))
        exporter.stop()
        """
    )
    (tmp_path / "prometheus_client_parser_probe.py").write_text(
        textwrap.dedent(
            """
            from prometheus_client.parser import text_string_to_metric_families

            def parse(text):
                return {s.name: s.value for f in text_string_to_metric_families(text)
                        for s in f.samples}
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["files"] is True
    assert report["children"] == report["directory"]
    assert Path(report["directory"]).name.startswith("uno-jobs-prometheus-")
    assert {"counter", "histogram", "gauge_livesum"} <= {
        name.rsplit("_", 1)[0] for name in report["own_files"]
    }
    assert report["processed"] == 1 and report["up"] == 1
    assert not Path(report["directory"]).exists()  # the private directory goes at exit


def test_other_worker_types_leave_the_multiprocess_setting_alone(
    monkeypatch: pytest.MonkeyPatch, make_exporter: Callable[..., PrometheusExporter]
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    exporter = make_exporter()
    assert exporter.children_directory is None
    assert MULTIPROC_ENV not in os.environ
    assert exporter.registry is prometheus_client.REGISTRY
    assert uno_jobs_prometheus.PrometheusExporter is PrometheusExporter


def test_a_file_not_yet_initialised_is_skipped_by_a_scrape(tmp_path: Path) -> None:
    """prometheus-client creates a process's file empty before sizing it: a scrape (or an
    archive merge) at that moment must not fail on it."""
    from uno_jobs_prometheus._files import DirectoryCollector, retire_process

    (tmp_path / "counter_4242.db").write_bytes(b"")
    assert list(DirectoryCollector(str(tmp_path)).collect()) == []
    assert retire_process(str(tmp_path), 4242) == 1
    assert not (tmp_path / "counter_4242.db").exists()
