"""Tasks of the cluster tests, run by ``cluster_driver.py`` workers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from uno_jobs import task


@task(name="cluster.slow")
async def slow(n: int, seconds: float) -> int:
    """Hold the worker's slot a while, so that a killed worker holds jobs."""
    await asyncio.sleep(seconds)
    return n


@task(name="cluster.freeze")
async def freeze(marker: str, seconds: float) -> int:
    """The first time: create ``marker``, then block the worker's event loop (its cluster
    heartbeats stop; its consumer thread goes on fetching). Again (redelivered): return."""
    path = Path(marker)
    if path.exists():
        return -1
    path.touch()
    time.sleep(seconds)  # blocks the loop on purpose
    return -1
