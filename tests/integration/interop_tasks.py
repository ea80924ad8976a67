"""Tasks the Celery interoperability tests run on uno_jobs workers (and in pool children)."""

from __future__ import annotations

from typing import Any

from uno_jobs import task


@task(name="interop.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Return what the job was called with, for the test to compare with what Celery sent."""
    return {"args": list(args), "kwargs": kwargs}


@task(name="interop.fail", max_retries=2, retry_delay=0)
def fail(message: str) -> None:
    raise ValueError(message)
