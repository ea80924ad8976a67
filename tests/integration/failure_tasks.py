"""Tasks for the failure-handling tests. Each run writes a marker file ``<name>.<n>`` into
``folder`` (its start time inside), so runs are counted across processes and restarts."""

from __future__ import annotations

import time
from pathlib import Path

from uno_jobs import Retry, task


def mark(folder: str, name: str) -> int:
    """Record one run of ``name``; returns its number (1 for the first)."""
    base = Path(folder)
    run = len(list(base.glob(f"{name}.*"))) + 1
    (base / f"{name}.{run}").write_text(repr(time.time()))
    return run


@task(name="failure.count")
def count(folder: str, name: str) -> int:
    return mark(folder, name)


@task(name="failure.count_retried", max_retries=1, retry_delay=0)
def count_retried(folder: str, name: str) -> int:
    """Never fails by itself; middleware ask for its retries."""
    return mark(folder, name)


@task(name="failure.retry_signal", max_retries=1, retry_delay=3600)
def retry_signal(folder: str, name: str, delay: float) -> int:
    """The first run asks for a retry in ``delay`` s (the task's own delay is an hour)."""
    run = mark(folder, name)
    if run == 1:
        raise Retry(delay=delay, reason="not yet")
    return run


@task(name="failure.retry_unbudgeted")
def retry_unbudgeted(folder: str, name: str) -> None:
    """Asks for a retry that the default ``max_retries=0`` does not allow."""
    mark(folder, name)
    raise Retry(delay=0)


_ERRORS: dict[str, type[Exception]] = {
    "reset": ConnectionResetError,
    "refused": ConnectionRefusedError,
    "value": ValueError,
}


@task(
    name="failure.picky",
    max_retries=2,
    retry_delay=0,
    retry_on=(ConnectionError,),
    dont_retry_on=(ConnectionRefusedError,),
)
def picky(folder: str, name: str, kind: str) -> None:
    run = mark(folder, name)
    raise _ERRORS[kind](f"{kind} on run {run}")


@task(name="failure.always", max_retries=2, retry_delay=0)
def always(folder: str, name: str) -> None:
    run = mark(folder, name)
    raise ValueError(f"attempt {run} fails")


@task(name="failure.spin", timeout=0.5, max_retries=1, retry_delay=0)
def spin(folder: str, name: str) -> None:
    """Pure-Python work past its 0.5 s limit (interruptible between bytecodes)."""
    mark(folder, name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pass
    (Path(folder) / f"finished-{name}").write_text("the time limit did not stop it")


@task(name="failure.once_later", max_retries=1, retry_delay=5)
def once_later(folder: str, name: str) -> int:
    """Fails its first run; the retry waits 5 s in the store."""
    run = mark(folder, name)
    if run == 1:
        raise ConnectionError("the first run fails")
    return run
