"""``WorkerStats``: the numbers behind ``get_health()`` and ``get_metrics()``."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from uno_jobs import metrics
from uno_jobs.metrics import RESERVOIR_SIZE, WorkerStats

SPEC_METRIC_KEYS = {
    "jobs_processed_total",
    "jobs_succeeded",
    "jobs_failed",
    "processing_time_avg_ms",
    "processing_time_p95_ms",
    "processing_time_p99_ms",
    "queue_wait_time_avg_ms",
    "throughput_jobs_per_minute",
    "error_rate",
    "active_jobs",
}


class Clock:
    """A fake ``time`` module for ``uno_jobs.metrics``: both clocks move only when told."""

    def __init__(self, wall: float = 1_681_293_600.0, mono: float = 1_000.0) -> None:
        self.wall = wall
        self.mono = mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(
        metrics, "time", SimpleNamespace(time=lambda: fake.wall, monotonic=lambda: fake.mono)
    )
    return fake


def test_fresh_stats_are_zero(clock: Clock) -> None:
    stats = WorkerStats()
    snapshot = stats.snapshot(active_jobs=0)
    assert set(snapshot) == SPEC_METRIC_KEYS
    assert all(value == 0 for value in snapshot.values()), snapshot
    assert stats.failure_rate == 0.0
    assert stats.last_completed_iso() is None
    assert stats.uptime() == 0


def test_counts_and_failure_rate(clock: Clock) -> None:
    stats = WorkerStats()
    for ok in (True, False, True):
        stats.job_finished(ok, 0.01)
    assert (stats.succeeded, stats.failed, stats.processed) == (2, 1, 3)
    assert stats.failure_rate == pytest.approx(1 / 3)
    snapshot = stats.snapshot(active_jobs=4)
    assert snapshot["jobs_processed_total"] == 3
    assert snapshot["jobs_succeeded"] == 2
    assert snapshot["jobs_failed"] == 1
    assert snapshot["error_rate"] == 0.3333
    assert snapshot["active_jobs"] == 4


def test_consecutive_failures_reset_on_success(clock: Clock) -> None:
    stats = WorkerStats()
    for _ in range(3):
        stats.job_finished(False, 0.0)
    assert stats.consecutive_failures == 3
    stats.job_finished(True, 0.0)
    assert stats.consecutive_failures == 0
    stats.job_finished(False, 0.0)
    assert stats.consecutive_failures == 1
    assert stats.failed == 4


def test_percentiles_and_average_on_known_samples(clock: Clock) -> None:
    stats = WorkerStats()
    durations = [ms / 1000 for ms in range(1, 101)]
    for duration in reversed(durations):  # order of arrival must not matter
        stats.job_finished(True, duration)
    snapshot = stats.snapshot(active_jobs=0)
    assert snapshot["processing_time_p95_ms"] == 95.0
    assert snapshot["processing_time_p99_ms"] == 99.0
    assert snapshot["processing_time_avg_ms"] == 50.5


def test_percentiles_of_one_sample(clock: Clock) -> None:
    stats = WorkerStats()
    stats.job_finished(True, 0.25)
    snapshot = stats.snapshot(active_jobs=0)
    assert snapshot["processing_time_p95_ms"] == 250.0
    assert snapshot["processing_time_p99_ms"] == 250.0


def test_reservoir_is_bounded_and_holds_the_latest_jobs(clock: Clock) -> None:
    stats = WorkerStats()
    total = 10 * RESERVOIR_SIZE
    for i in range(total):
        # Old jobs are slow, the last RESERVOIR_SIZE are 5 ms.
        stats.job_finished(True, 1.0 if i < total - RESERVOIR_SIZE else 0.005)
        clock.advance(0.1)  # 10 jobs a second, so the throughput window is bounded too
    assert len(stats._durations) == RESERVOIR_SIZE
    assert len(stats._finished_at) <= 601
    snapshot = stats.snapshot(active_jobs=0)
    assert snapshot["processing_time_p99_ms"] == 5.0, "percentiles cover the latest jobs"
    assert snapshot["jobs_processed_total"] == total
    # The average is over every job, not just the reservoir.
    assert snapshot["processing_time_avg_ms"] == pytest.approx(
        ((total - RESERVOIR_SIZE) * 1000 + RESERVOIR_SIZE * 5) / total, abs=0.001
    )


def test_queue_wait_leaves_out_jobs_without_an_enqueue_time(clock: Clock) -> None:
    stats = WorkerStats()
    stats.job_started(100.0, 100.2)  # 200 ms
    stats.job_started(None, 500.0)  # a Celery producer's job: no enqueue time
    stats.job_started(200.0, 200.4)  # 400 ms
    assert stats.snapshot(active_jobs=0)["queue_wait_time_avg_ms"] == pytest.approx(300.0)


def test_queue_wait_is_never_negative(clock: Clock) -> None:
    stats = WorkerStats()
    stats.job_started(105.0, 100.0)  # producer clock ahead of the worker's
    assert stats.snapshot(active_jobs=0)["queue_wait_time_avg_ms"] == 0.0


def test_queue_wait_without_any_enqueue_time_is_zero(clock: Clock) -> None:
    stats = WorkerStats()
    stats.job_started(None, 1.0)
    assert stats.snapshot(active_jobs=0)["queue_wait_time_avg_ms"] == 0.0


def test_throughput_counts_only_the_last_minute(clock: Clock) -> None:
    stats = WorkerStats()
    for _ in range(3):
        stats.job_finished(True, 0.0)
    clock.advance(30)
    for _ in range(2):
        stats.job_finished(False, 0.0)
    assert stats.throughput_per_minute() == 5
    clock.advance(31)  # the first three are 61 s old
    assert stats.throughput_per_minute() == 2
    assert stats.snapshot(active_jobs=0)["throughput_jobs_per_minute"] == 2
    clock.advance(30)
    assert stats.throughput_per_minute() == 0
    assert stats.processed == 5, "the window does not touch the totals"


def test_last_completed_iso_format(clock: Clock) -> None:
    stats = WorkerStats()
    clock.wall = 1_681_293_600.75  # 2023-04-12T10:00:00.75Z
    stats.job_finished(True, 0.0)
    iso = stats.last_completed_iso()
    assert iso == "2023-04-12T10:00:00Z"
    assert iso is not None and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", iso)


def test_uptime_in_whole_seconds(clock: Clock) -> None:
    stats = WorkerStats()
    clock.advance(3600.9)
    assert stats.uptime() == 3600


def test_restart_resets_everything(clock: Clock) -> None:
    stats = WorkerStats()
    stats.job_started(1.0, 2.0)
    stats.job_finished(False, 1.0)
    clock.advance(10)
    stats.restart()
    assert stats.processed == 0 and stats.consecutive_failures == 0
    assert stats.uptime() == 0
    assert stats.last_completed is None
    assert all(v == 0 for v in stats.snapshot(active_jobs=0).values())


def test_snapshot_values_are_numbers(clock: Clock) -> None:
    stats = WorkerStats()
    stats.job_started(1.0, 1.5)
    stats.job_finished(True, 0.0123)
    snapshot = stats.snapshot(active_jobs=1)
    assert set(snapshot) == SPEC_METRIC_KEYS
    for key in ("jobs_processed_total", "jobs_succeeded", "jobs_failed", "active_jobs"):
        assert type(snapshot[key]) is int, key
    assert type(snapshot["throughput_jobs_per_minute"]) is int
    for key in SPEC_METRIC_KEYS - {"jobs_processed_total", "jobs_succeeded", "jobs_failed"}:
        assert isinstance(snapshot[key], (int, float)), key
    assert snapshot["processing_time_avg_ms"] == 12.3
    assert snapshot["queue_wait_time_avg_ms"] == 500.0
