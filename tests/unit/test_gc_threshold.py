"""The worker's garbage collection settings: the threshold (raised at start, never
lowered) and the freeze of what is alive when the first worker starts."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from uno_jobs.errors import ConfigurationError
from uno_jobs.worker import AsyncWorker, _base
from uno_jobs.worker._base import freeze_gc_once, raise_gc_threshold


@pytest.fixture(autouse=True)
def _restore_threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_a_lower_threshold_is_raised_and_the_others_kept() -> None:
    gc.set_threshold(700, 11, 12)
    raise_gc_threshold(20_000)
    assert gc.get_threshold() == (20_000, 11, 12)


def test_a_higher_threshold_is_kept() -> None:
    gc.set_threshold(50_000, 10, 10)
    raise_gc_threshold(20_000)
    assert gc.get_threshold() == (50_000, 10, 10)


def test_disabled_collection_stays_disabled() -> None:
    gc.set_threshold(0, 10, 10)  # the application turned automatic collection off
    raise_gc_threshold(20_000)
    assert gc.get_threshold() == (0, 10, 10)


def test_none_leaves_the_threshold_alone() -> None:
    gc.set_threshold(700, 10, 10)
    raise_gc_threshold(None)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_option_defaults_to_twenty_thousand_and_rejects_zero() -> None:
    assert AsyncWorker(queue_name="q").options.gc_threshold == 20_000
    assert AsyncWorker(queue_name="q", gc_threshold=None).options.gc_threshold is None
    with pytest.raises(ConfigurationError, match="gc_threshold"):
        AsyncWorker(queue_name="q", gc_threshold=0)


@pytest.fixture
def _unfrozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process where no worker froze anything yet; what the test froze is thawed after."""
    monkeypatch.setattr(_base, "_gc_frozen", False)
    frozen_before = gc.get_freeze_count()
    yield
    if not frozen_before:
        gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.usefixtures("_unfrozen")
def test_the_first_start_collects_young_cycles_then_freezes_what_is_alive() -> None:
    gc.unfreeze()
    garbage = _Cycle()
    garbage_id = id(garbage)
    del garbage  # a young cycle: only a collection frees it
    kept = _Cycle()
    freeze_gc_once()
    assert gc.get_freeze_count() > 0
    assert not any(id(o) == garbage_id and type(o) is _Cycle for o in gc.get_objects())
    assert kept not in gc.get_objects(), "frozen objects are no longer tracked by generation"


@pytest.mark.usefixtures("_unfrozen")
def test_only_the_first_start_freezes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(f"collect{a}") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    freeze_gc_once()
    freeze_gc_once()
    assert calls == ["collect(1,)", "freeze"]


@pytest.mark.usefixtures("_unfrozen")
def test_nothing_is_frozen_while_collection_is_off() -> None:
    gc.unfreeze()
    gc.disable()
    try:
        freeze_gc_once()
        assert gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_the_freeze_option_defaults_to_on() -> None:
    assert AsyncWorker(queue_name="q").options.gc_freeze is True
    assert AsyncWorker(queue_name="q", gc_freeze=False).options.gc_freeze is False
