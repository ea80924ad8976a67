"""Tasks for the ProcessPoolWorker tests, imported by name in the worker's children."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

from uno_jobs import task


class Unpicklable(Exception):
    """An exception that pickles but cannot be unpickled (its __init__ needs two args)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


@task(name="proc.pid")
def pid(value: int = 0) -> dict[str, int]:
    """The child's pid and the value back."""
    return {"pid": os.getpid(), "value": value}


@task(name="proc.async_pid")
async def async_pid(value: int) -> dict[str, int]:
    await asyncio.sleep(0.01)
    return {"pid": os.getpid(), "value": value * 2}


@task(name="proc.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@task(name="proc.fail_unpicklable")
def fail_unpicklable(detail: str) -> None:
    raise Unpicklable(7, detail)


@task(name="proc.bad_result")
def bad_result() -> object:
    """Returns something that cannot be pickled back to the worker."""
    return threading.Lock()


@task(name="proc.spin", timeout=1)
def spin(folder: str) -> None:
    """Pure-Python work far past its 1 s limit; leaves a start marker with its pid."""
    (Path(folder) / f"spin.{os.getpid()}").write_text(str(time.time()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pass


@task(name="proc.hold")
def hold(folder: str, name: str, seconds: float) -> dict[str, int]:
    """Write a start marker ``<name>.<pid>``, then sleep; returns the pid."""
    (Path(folder) / f"{name}.{os.getpid()}").write_text(str(time.time()))
    time.sleep(seconds)
    return {"pid": os.getpid()}


@task(name="proc.kill_first")
def kill_first(folder: str) -> dict[str, int]:
    """SIGKILL its own process the first time (marker file), succeed the next."""
    marker = Path(folder) / "killed-once"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return {"pid": os.getpid()}


@task(name="proc.kill_always")
def kill_always(folder: str) -> None:
    """SIGKILL its own process every time; counts its runs with marker files."""
    (Path(folder) / f"kill.{os.getpid()}").write_text("")
    os.kill(os.getpid(), signal.SIGKILL)


@task(name="proc.exit_hard")
def exit_hard(code: int) -> None:
    os._exit(code)


@task(name="proc.grow")
def grow(megabytes: int) -> int:
    """Keep ``megabytes`` MiB alive in the child (so its resident memory grows)."""
    _hoard.append(b"\x01" * (megabytes * 1024 * 1024))
    return os.getpid()


_hoard: list[bytes] = []
