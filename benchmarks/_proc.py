"""Subprocess helpers: run a step that prints JSON, start and stop a worker process.

Every process is started by the runner itself in a session of its own; it is stopped by
its own pid (SIGTERM, then SIGKILL to its own process group if it does not exit), never
by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["StepError", "run_json", "start", "stop"]

_TAIL_CHARS = 1500


class StepError(RuntimeError):
    """A benchmark step failed; the message carries the tail of its log."""


def _tail(log_path: Path) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-_TAIL_CHARS:].strip()


def run_json(
    cmd: Sequence[str], env: Mapping[str, str], timeout: float, log_path: Path
) -> dict[str, Any]:
    """Run ``cmd`` to completion and parse the JSON object on the last line of stdout.

    Raises:
        StepError: it timed out, exited non-zero or printed no JSON.
    """
    with log_path.open("ab") as log:
        try:
            done = subprocess.run(
                list(cmd),
                env=dict(env),
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise StepError(f"{cmd[2]}: no result after {timeout:g} s; log {log_path}") from None
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        raise StepError(
            f"{' '.join(cmd[2:4])}: exit code {done.returncode}; log {log_path}:\n{_tail(log_path)}"
        )
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise StepError(f"{cmd[2]}: not JSON: {lines[-1][:200]!r}") from None
    if not isinstance(result, dict):
        raise StepError(f"{cmd[2]}: expected a JSON object, got {lines[-1][:200]!r}")
    return result


def start(cmd: Sequence[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a long-running worker process with its output going to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(cmd),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_seconds: float = 30.0
) -> None:
    """Send ``proc`` the stop signal ``sig``; kill its process group if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace_seconds)
        return
    except subprocess.TimeoutExpired:
        pass
    # The group is the session this runner created for the worker (start_new_session),
    # so this reaches its children (Dramatiq's worker process) and nothing else.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
