"""The worker's garbage-collection threshold: raised at start, never lowered."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from uno_jobs.errors import ConfigurationError
from uno_jobs.worker import AsyncWorker
from uno_jobs.worker._base import raise_gc_threshold


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
