"""Tasks of the chaos suite, imported by the worker processes (``--app chaos_tasks``).

Each run appends ``start <job id> <worker label>`` to the ledger file named by
``UNO_CHAOS_LEDGER`` before it does its work. The line goes out in one ``write`` on a
file opened with ``O_APPEND``, so lines of concurrent runs (threads, child processes,
workers) never interleave, and a line is in the file before a SIGKILL can land after it.
The label (``UNO_CHAOS_WORKER``) names the worker process the run belongs to; a process
pool's children inherit it.
"""

from __future__ import annotations

import asyncio
import os
import time

from uno_jobs import task

LEDGER_ENV = "UNO_CHAOS_LEDGER"
LABEL_ENV = "UNO_CHAOS_WORKER"


def _record_start(job_id: str) -> None:
    line = f"start {job_id} {os.environ.get(LABEL_ENV, '?')}\n".encode()
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@task(name="chaos.work")
def work(job_id: str, ms: float) -> str:
    """Record the start, then take ``ms`` milliseconds, so a kill can land mid-job."""
    _record_start(job_id)
    time.sleep(ms / 1000)
    return job_id


@task(name="chaos.work_async")
async def work_async(job_id: str, ms: float) -> str:
    """``work`` as a coroutine, for the async worker."""
    _record_start(job_id)
    await asyncio.sleep(ms / 1000)
    return job_id


@task(name="chaos.fail")
def fail(message: str) -> None:
    """Always fails, with ``message`` (the secrets test's failing job)."""
    raise RuntimeError(message)
