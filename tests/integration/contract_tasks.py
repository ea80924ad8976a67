"""Tasks used by the contract suite, in-process and by worker subprocesses (``--app``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from uno_jobs import task


@task(name="contract.add")
def add(a: int, b: int) -> int:
    return a + b


@task(name="contract.async_add")
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task(name="contract.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@task(name="contract.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task(name="contract.mark")
def mark(folder: str, name: str, hold: float = 0.0) -> str:
    """Write a start marker ``<name>.<pid>.<n>`` into ``folder``, then hold for a while."""
    base = Path(folder)
    n = len(list(base.glob(f"{name}.*")))
    # Written under another name and renamed: a reader never sees the file empty.
    scratch = base / f".scratch-{os.getpid()}-{time.monotonic_ns()}"
    scratch.write_text(str(time.time()))
    os.replace(scratch, base / f"{name}.{os.getpid()}.{n}")
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return name


@task(name="contract.hold_first")
def hold_first(folder: str, name: str, hold: float) -> str:
    """Like ``mark``, but only the first run holds: a redelivery completes at once."""
    first = not list(Path(folder).glob(f"{name}.*"))
    return mark(folder, name, hold if first else 0.0)


@task(name="contract.hold_until")
def hold_until(folder: str, name: str, release: str, limit: float = 30.0) -> str:
    """Like ``mark``, then hold until the file ``release`` exists (at most ``limit`` s)."""
    mark(folder, name)
    deadline = time.monotonic() + limit
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return name


def _flaky(folder: str, name: str, failures: int) -> int:
    """Fail the first ``failures`` attempts (counted with marker files), then succeed."""
    attempt = len(list(Path(folder).glob(f"{name}.*"))) + 1
    mark(folder, name)
    if attempt <= failures:
        raise ValueError(f"attempt {attempt} fails")
    return attempt


@task(name="contract.flaky", max_retries=2, retry_delay=0)
def flaky(folder: str, name: str, failures: int) -> int:
    return _flaky(folder, name, failures)


@task(name="contract.flaky_later", max_retries=1, retry_delay=0.5)
def flaky_later(folder: str, name: str, failures: int) -> int:
    return _flaky(folder, name, failures)


@task(name="contract.flaky_hourly", max_retries=2, retry_delay=3600)
def flaky_hourly(folder: str, name: str, failures: int) -> int:
    """Retried after an hour by the default policy; at once by a policy that says so."""
    return _flaky(folder, name, failures)


@task(name="contract.spin", timeout=0.5)
def spin(folder: str, name: str) -> str:
    """Pure-Python work past its 0.5 s limit (interruptible between bytecodes)."""
    mark(folder, name)
    deadline = time.monotonic() + 30
    n = 0
    while time.monotonic() < deadline:
        n += 1
    (Path(folder) / f"{name}.finished").write_text(str(n))
    return name


@task(name="contract.async_sleep", timeout=0.5)
async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def helper() -> int:
    """Not a task: resolving it by module path must be refused."""
    return 1
