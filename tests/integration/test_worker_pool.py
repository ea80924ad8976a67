"""WorkerPool: members as OS processes, autoscaling both ways, dead members replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import cluster_tasks
import pytest
from conftest import make_broker_url, opened, run

from uno_jobs.errors import ConfigurationError
from uno_jobs.worker import AsyncWorker, WorkerPool

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_broker(uno_home: Path) -> Iterator[str]:
    url, cleanup = make_broker_url("redis", visibility_timeout=30.0)
    try:
        yield url
    finally:
        cleanup()


async def until(what: str, check: Callable[[], Awaitable[bool] | bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def _pool(queue_name: str, broker: str, **options: object) -> WorkerPool:
    return WorkerPool(
        queue_name=queue_name,
        worker_type=AsyncWorker,
        worker_options={"max_concurrent": 2, "batch_size": 1, "broker_url": broker},
        app_modules=["cluster_tasks"],
        report_interval=0.1,
        scale_interval=0.2,
        **options,  # type: ignore[arg-type]
    )


def test_backlog_grows_the_pool_to_max_and_idleness_shrinks_it_to_min(
    queue_name: str, redis_broker: str
) -> None:
    async def main() -> None:
        pool = _pool(queue_name, redis_broker, min_workers=1, max_workers=3, scale_down_ticks=3)
        async with opened(queue_name, redis_broker) as queue:
            await pool.start(auto_scale=True)
            try:
                assert pool.size == 1
                pids = {m.process.pid for m in pool._members.values()}
                assert os.getpid() not in pids
                jobs = [await queue.enqueue(cluster_tasks.slow, args=[n, 0.4]) for n in range(40)]
                await until("the pool grows to max_workers", lambda: pool.size == 3, 60)
                assert [await job.wait(timeout=90) for job in jobs] == list(range(40))
                records = [await queue.get_job(job.id) for job in jobs]
                ran_on = {r.worker_id for r in records if r is not None}
                assert len(ran_on) >= 2 and ran_on <= {*pool.members, *ran_on}

                async def all_counted() -> bool:
                    return (await pool.get_metrics())["jobs_processed_total"] >= 40

                await until("every job counted in the metrics", all_counted, 30)
                await until("the idle pool shrinks to min_workers", lambda: pool.size == 1, 60)
                metrics = await pool.get_metrics()
                assert metrics["jobs_succeeded"] >= 40 and metrics["jobs_failed"] == 0
                assert metrics["workers"] == 1
            finally:
                await pool.shutdown()
            assert pool.size == 0

    run(main)


def test_a_member_that_dies_is_replaced(queue_name: str, redis_broker: str) -> None:
    async def main() -> None:
        pool = _pool(queue_name, redis_broker, min_workers=2, max_workers=2)
        async with opened(queue_name, redis_broker) as queue:
            await pool.start(auto_scale=False)
            try:
                victim = next(iter(pool._members.values()))
                assert victim.process.pid is not None
                os.kill(victim.process.pid, signal.SIGKILL)
                await until("the dead member is replaced", lambda: pool.replaced == 1, 30)
                await until("two members again", lambda: pool.size == 2, 30)
                assert victim.worker_id not in pool.members
                job = await queue.enqueue(cluster_tasks.slow, args=[7, 0.0])
                assert await job.wait(timeout=60) == 7
            finally:
                await pool.shutdown()

    run(main)


def test_pool_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="max_workers=1 < min_workers=2"):
        WorkerPool("q", AsyncWorker, min_workers=2, max_workers=1)
    with pytest.raises(ConfigurationError, match="'max_concurent'"):
        WorkerPool("q", AsyncWorker, worker_options={"max_concurent": 3})
    with pytest.raises(ConfigurationError, match="'scale_intervall'"):
        WorkerPool("q", AsyncWorker, scale_intervall=1)
