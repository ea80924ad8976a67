"""Which Celery state each job update becomes (no Redis needed)."""

from __future__ import annotations

from typing import Any

import pytest

from uno_jobs.celery_results import CeleryResults, celery_meta
from uno_jobs.errors import ConfigurationError
from uno_jobs.store import JobStatus


def _error(**extra: Any) -> dict[str, Any]:
    return {"error_type": "KeyError", "error_message": "'x'", "error_traceback": "tb", **extra}


def test_states() -> None:
    ok = celery_meta("j", {"status": JobStatus.SUCCEEDED, "result": [1]})
    assert ok is not None and (ok["status"], ok["result"], ok["task_id"]) == ("SUCCESS", [1], "j")
    assert ok["date_done"] is not None
    retry = celery_meta("j", {"status": JobStatus.SCHEDULED, **_error()})
    assert retry is not None and retry["status"] == "RETRY" and retry["date_done"] is None
    assert retry["result"] == {
        "exc_type": "KeyError",
        "exc_message": ["'x'"],
        "exc_module": "builtins",
    }
    failed = celery_meta("j", {"status": JobStatus.FAILED, **_error(error_type="MyError")})
    assert failed is not None and failed["status"] == "FAILURE"
    assert failed["result"]["exc_module"] is None and failed["traceback"] == "tb"
    dead = celery_meta(
        "j", {"status": JobStatus.DEAD, "dead_reason": "expired", "error_message": "at t"}
    )
    assert dead is not None
    assert dead["result"] == {
        "exc_type": "JobDeadLettered",
        "exc_message": ["expired: at t"],
        "exc_module": None,
    }
    # No Celery state: running, queued, or waiting for an eta without having failed.
    for fields in (
        {"status": JobStatus.RUNNING},
        {"status": JobStatus.QUEUED},
        {"status": JobStatus.SCHEDULED},
    ):
        assert celery_meta("j", fields) is None


def test_key_prefix_as_celery_applies_it() -> None:
    assert CeleryResults("redis://h/0").key("j") == "celery-task-meta-j"
    assert CeleryResults("redis://h/0?key_prefix=app:").key("j") == "app:celery-task-meta-j"
    assert CeleryResults("redis://h/0?key_prefix=app").key("j") == "app_celery-task-meta-j"


@pytest.mark.parametrize("query", ["expires=soon", "expires=0", "prefix=x"])
def test_bad_options_are_named(query: str) -> None:
    with pytest.raises(ConfigurationError, match="celery_results_url"):
        CeleryResults(f"redis://h/0?{query}")
