"""A cluster of DistributedWorkers, each its own OS process, on Redis and RabbitMQ.

Coordination is on Redis. The leader, while it runs jobs, is killed with SIGKILL: its jobs
complete on the other workers, it leaves the membership within the heartbeat TTL, another
node leads within two lease periods, and every job succeeds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cluster_tasks
import pytest
import redis
from conftest import REDIS_DB, REDIS_HOST, delete_redis_prefix, make_broker_url, opened, run

from uno_jobs import JobStatus
from uno_jobs.coordination import ClusterMember, WorkerCoordinator

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
URL = f"redis://{REDIS_HOST}/{REDIS_DB}"
BEAT = 0.5
WORKERS = ("p1", "p2", "p3")
JOBS = 40


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest, uno_home: Path) -> Iterator[str]:
    # A short visibility timeout: on Redis the killed worker's messages come back after it.
    url, cleanup = make_broker_url(request.param, visibility_timeout=3.0)
    try:
        yield url
    finally:
        cleanup()


@pytest.fixture
def cluster() -> Iterator[str]:
    cluster_id = f"t-{uuid.uuid4().hex[:10]}"
    try:
        yield cluster_id
    finally:
        delete_redis_prefix(f"uno_jobs:cluster:{cluster_id}:")


@contextmanager
def cluster_processes(
    names: tuple[str, ...], queue_name: str, cluster: str, broker: str, uno_home: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """One ``cluster_driver.py`` process per name, each logging to ``<name>.log``.

    On exit, those still running get SIGTERM (SIGKILL after 30 s) and are reaped.
    """
    # The repository root too: the workers run the uno_jobs under test, not an installed one.
    paths = (str(HERE), str(HERE.parent.parent), os.environ.get("PYTHONPATH"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "UNO_JOBS_BROKER_URL": broker,
        "UNO_JOBS_HOME": str(uno_home),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with ExitStack() as stack:
        for name in names:
            log = stack.enter_context(open(uno_home.parent / f"{name}.log", "w"))
            procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "cluster_driver.py"),
                    queue_name,
                    name,
                    cluster,
                    URL,
                    str(BEAT),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield procs
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def _members(coordinator: WorkerCoordinator) -> dict[str, ClusterMember]:
    return {m.worker_id: m for m in await coordinator.members()}


async def _until(what: str, check: object, timeout: float) -> float:
    """Await ``check()`` until truthy; return the seconds it took."""
    t0 = time.monotonic()
    while True:
        if await check():  # type: ignore[operator]
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def test_sigkill_of_the_leader_loses_no_job(
    broker: str, cluster: str, queue_name: str, uno_home: Path
) -> None:

    async def main() -> None:
        viewer = WorkerCoordinator(URL, cluster, heartbeat_interval=BEAT)
        async with opened(queue_name, broker) as queue:
            try:
                await _until(
                    "three members and a leader",
                    lambda: _three_with_leader(viewer),
                    timeout=60,
                )
                jobs = [await queue.enqueue(cluster_tasks.slow, args=[n, 0.3]) for n in range(JOBS)]
                members = await _members(viewer)
                leader = next(m for m in members.values() if m.leader)
                old_token = (await viewer.leader() or (0, ""))[0]

                async def leader_busy() -> bool:
                    member = (await _members(viewer)).get(leader.worker_id)
                    return member is not None and member.current_jobs > 0

                await _until("the leader runs jobs", leader_busy, timeout=30)
                procs[leader.worker_id].send_signal(signal.SIGKILL)
                procs[leader.worker_id].wait(timeout=10)

                async def gone() -> bool:
                    return leader.worker_id not in await _members(viewer)

                async def new_leader() -> bool:
                    now = await viewer.leader()
                    return now is not None and now[1] != leader.node

                left = await _until("the killed worker leaves", gone, timeout=30)
                assert left <= viewer.ttl_seconds + BEAT, left
                took_over = await _until("another node leads", new_leader, timeout=30)
                assert took_over <= 2 * viewer.leader_lease, took_over
                token, _node = await viewer.leader() or (0, "")
                assert token > old_token

                results = [await job.wait(timeout=90) for job in jobs]
                assert results == list(range(JOBS))
                records = [await queue.get_job(job.id) for job in jobs]
                assert all(r is not None and r.status == JobStatus.SUCCEEDED for r in records)
                lost = [r for r in records if r is not None and r.worker_lost]
                assert lost, "the killed worker held no running job"
                assert all(r.worker_id != leader.worker_id for r in lost)
                survivors = {w for w in WORKERS if w != leader.worker_id}
                assert {r.worker_id for r in lost} <= survivors
                assert set(await _members(viewer)) == survivors
            finally:
                await viewer.stop()

    with cluster_processes(WORKERS, queue_name, cluster, broker, uno_home) as procs:
        run(main)


async def _three_with_leader(viewer: WorkerCoordinator) -> bool:
    members = await viewer.members()
    return len(members) == len(WORKERS) and any(m.leader for m in members)


@pytest.mark.parametrize("kind", ["redis", "embedded"])
def test_jobs_a_dead_worker_held_come_back_at_once(
    kind: str, cluster: str, queue_name: str, uno_home: Path
) -> None:
    """Without the coordinator they would wait out the 60 s visibility timeout."""
    broker, cleanup = make_broker_url(kind, visibility_timeout=60.0)

    async def main() -> None:
        viewer = WorkerCoordinator(URL, cluster, heartbeat_interval=BEAT)
        async with opened(queue_name, broker) as queue:
            try:

                async def both() -> bool:
                    return len(await viewer.members()) == 2

                await _until("two members", both, timeout=60)
                # Eight jobs fill both workers' windows (2 running + 2 prefetched each).
                jobs = [await queue.enqueue(cluster_tasks.slow, args=[n, 4.0]) for n in range(8)]

                async def victim_runs_two() -> bool:
                    member = (await _members(viewer)).get("r1")
                    return member is not None and member.current_jobs == 2

                await _until("r1 runs two jobs", victim_runs_two, timeout=30)
                # Paused: r1 hands its prefetched jobs back and its next heartbeat reports
                # exactly the two it runs.
                await viewer.pause("r1")

                async def victim_paused() -> bool:
                    member = (await _members(viewer)).get("r1")
                    return member is not None and member.state == "paused"

                await _until("r1 paused", victim_paused, timeout=10)
                procs["r1"].send_signal(signal.SIGKILL)
                procs["r1"].wait(timeout=10)
                t0 = time.monotonic()
                results = [await job.wait(timeout=45) for job in jobs]
                elapsed = time.monotonic() - t0
                assert results == list(range(8))
                assert elapsed < 30, elapsed  # far below the 60 s visibility timeout
                records = [await queue.get_job(job.id) for job in jobs]
                lost = [r for r in records if r is not None and r.worker_lost]
                assert len(lost) == 2 and all(r.worker_id == "r2" for r in lost)
            finally:
                await viewer.stop()

    try:
        with cluster_processes(("r1", "r2"), queue_name, cluster, broker, uno_home) as procs:
            run(main)
    finally:
        cleanup()


@pytest.mark.parametrize("survivor", ["r2", "r1"])
def test_jobs_a_dead_worker_fetched_after_its_last_heartbeat_come_back_at_once(
    survivor: str, cluster: str, queue_name: str, uno_home: Path
) -> None:
    """r1 freezes its event loop (no more heartbeats) while its consumer thread fetches
    three more jobs, and is killed: its last heartbeat predates them. The survivor,
    started then, recovers them through r1's owner set; without it they would wait out the
    300 s visibility timeout. r2 sweeps r1's entry; a new r1 (a restart with the same id,
    nobody else alive to sweep) takes the entry over and recovers it."""
    broker, cleanup = make_broker_url("redis", visibility_timeout=300.0)
    prefix = parse_qs(urlsplit(broker).query)["key_prefix"][0]
    raw = redis.Redis.from_url(URL)
    marker = uno_home.parent / "r1-frozen"

    async def main() -> None:
        viewer = WorkerCoordinator(URL, cluster, heartbeat_interval=BEAT)
        async with opened(queue_name, broker) as queue:
            try:
                with cluster_processes(("r1",), queue_name, cluster, broker, uno_home) as procs:

                    async def r1_member() -> bool:
                        return "r1" in await _members(viewer)

                    await _until("r1 joins", r1_member, timeout=60)
                    frozen = await queue.enqueue(cluster_tasks.freeze, args=[str(marker), 120.0])
                    await _until("r1 freezes", lambda: _true(marker.exists()), timeout=30)
                    # Its window is 4: the frozen job and these three.
                    jobs = [
                        await queue.enqueue(cluster_tasks.slow, args=[n, 0.1]) for n in range(3)
                    ]

                    async def fetched() -> bool:
                        return int(raw.hlen(f"{prefix}unacked")) == 4

                    await _until("r1 fetches the three", fetched, timeout=30)
                    procs["r1"].send_signal(signal.SIGKILL)
                    procs["r1"].wait(timeout=10)

                async def r1_entry() -> ClusterMember:
                    members = await viewer.members(include_dead=True)
                    return next(m for m in members if m.worker_id == "r1")

                last = await r1_entry()
                assert last.in_flight <= 1, "its last heartbeat came before the three"

                async def r1_dead() -> bool:
                    return not (await r1_entry()).alive

                await _until("r1's heartbeat key expires", r1_dead, timeout=30)
                with cluster_processes((survivor,), queue_name, cluster, broker, uno_home):
                    t0 = time.monotonic()
                    results = [await job.wait(timeout=60) for job in jobs]
                    elapsed = time.monotonic() - t0
                    assert results == [0, 1, 2]
                    assert await frozen.wait(timeout=30) == -1
                    assert elapsed < 60, elapsed  # far below the 300 s visibility timeout
                    records = [await queue.get_job(job.id) for job in jobs]
                    assert all(r is not None and r.worker_id == survivor for r in records)
            finally:
                await viewer.stop()

    try:
        run(main)
    finally:
        raw.close()
        cleanup()


async def _true(value: bool) -> bool:
    return value
