"""The retention of finished records, dead letters and cancellations: option, env, default."""

from __future__ import annotations

import uuid

import pytest

from uno_jobs.config import ENV_RETENTION_SECONDS, resolve_retention_seconds
from uno_jobs.errors import ConfigurationError
from uno_jobs.store import DEFAULT_RETENTION_SECONDS, open_store


def memory_url() -> str:
    return f"memory://retention-{uuid.uuid4().hex}"


def test_the_default_is_seven_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_RETENTION_SECONDS, raising=False)
    assert resolve_retention_seconds() == DEFAULT_RETENTION_SECONDS == 7 * 24 * 3600
    assert open_store(memory_url()).retention_seconds == DEFAULT_RETENTION_SECONDS


def test_the_environment_sets_it_and_the_option_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_RETENTION_SECONDS, " 3600 ")
    assert open_store(memory_url()).retention_seconds == 3600.0
    assert open_store(memory_url(), retention_seconds=60).retention_seconds == 60.0


@pytest.mark.parametrize("raw", ["0", "-5", "a week", "nan", "inf"])
def test_a_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(ENV_RETENTION_SECONDS, raw)
    with pytest.raises(ConfigurationError, match=ENV_RETENTION_SECONDS) as caught:
        open_store(memory_url())
    assert repr(raw) in str(caught.value)


def test_the_due_job_mover_purges_expired_entries() -> None:
    """Workers enforce retention themselves: the mover calls purge_expired periodically."""
    from unittest import mock

    from uno_jobs.schedule import DueJobMover

    store = mock.Mock()
    store.purge_expired.return_value = 3
    mover = DueJobMover(store, mock.Mock(), 0.01, "t")
    assert mover.purge() == 3
    store.purge_expired.assert_called_once()
    store.purge_expired.side_effect = RuntimeError("store down")
    assert mover.purge() == 0  # logged, the mover goes on
