"""Tasks of the cluster tests, run by ``cluster_driver.py`` workers."""

from __future__ import annotations

import asyncio

from uno_jobs import task


@task(name="cluster.slow")
async def slow(n: int, seconds: float) -> int:
    """Hold the worker's slot a while, so that a killed worker holds jobs."""
    await asyncio.sleep(seconds)
    return n
