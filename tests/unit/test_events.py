"""EventHub: fan-out to listeners; a raising listener is logged once and never stops others."""

from __future__ import annotations

import logging

import pytest

from uno_jobs.events import EventHub, JobEvents


class Recorder(JobEvents):
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def job_started(self, queue: str, task: str, wait_seconds: float | None) -> None:
        self.calls.append(("started", queue, task, wait_seconds))

    def job_finished(self, queue: str, task: str, outcome: str, duration_seconds: float) -> None:
        self.calls.append(("finished", queue, task, outcome, duration_seconds))


class Broken(JobEvents):
    def job_started(self, queue: str, task: str, wait_seconds: float | None) -> None:
        raise RuntimeError("listener bug")


def test_fans_out_in_order_and_skips_a_broken_listener(caplog: pytest.LogCaptureFixture) -> None:
    first, last = Recorder(), Recorder()
    hub = EventHub([first, Broken(), last])
    assert hub
    with caplog.at_level(logging.ERROR, logger="uno_jobs.events"):
        hub.job_started("q", "t", 0.5)
        hub.job_started("q", "t", None)
        hub.job_finished("q", "t", "succeeded", 0.01)
        hub.job_dead_lettered("q", "t", "unknown_task")  # not overridden: a no-op
    assert (
        first.calls
        == last.calls
        == [
            ("started", "q", "t", 0.5),
            ("started", "q", "t", None),
            ("finished", "q", "t", "succeeded", 0.01),
        ]
    )
    reports = [r for r in caplog.records if "Broken.job_started raised" in r.getMessage()]
    assert len(reports) == 1


def test_empty_hub_is_falsy() -> None:
    hub = EventHub()
    assert not hub
    hub.add(JobEvents())
    assert hub
