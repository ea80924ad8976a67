"""WorkerCoordinator against the real Redis: membership, dead workers, leader, commands.

The workers here run in this process on the embedded broker; the coordinators of one
test share a random cluster id, and its keys are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import REDIS_DB, REDIS_HOST, async_wait_until, delete_redis_prefix, run

from uno_jobs.coordination import ClusterMember, WorkerCoordinator
from uno_jobs.errors import ConfigurationError, WorkerIdInUseError
from uno_jobs.worker import AsyncWorker

pytestmark = pytest.mark.integration

URL = f"redis://{REDIS_HOST}/{REDIS_DB}"
BEAT = 0.2
T = TypeVar("T")


@pytest.fixture
def cluster(uno_home: Path) -> Iterator[str]:
    cluster_id = f"t-{uuid.uuid4().hex[:10]}"
    try:
        yield cluster_id
    finally:
        delete_redis_prefix(f"uno_jobs:cluster:{cluster_id}:")


def _coordinator(cluster_id: str, beat: float = BEAT) -> WorkerCoordinator:
    return WorkerCoordinator(URL, cluster_id, heartbeat_interval=beat)


def _worker(worker_id: str, queue_name: str) -> AsyncWorker:
    return AsyncWorker(queue_name=queue_name, worker_id=worker_id, max_concurrent=2)


async def eventually(
    fetch: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 5.0
) -> T:
    """Fetch until ``check`` holds; fail after ``timeout`` seconds with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s; last value: {value!r}")
        await asyncio.sleep(0.02)


def _states(members: list[ClusterMember]) -> dict[str, str]:
    return {m.worker_id: m.state for m in members}


def test_membership_lists_each_worker_and_refuses_a_live_id(cluster: str, queue_name: str) -> None:
    async def main() -> None:
        coordinator, other = _coordinator(cluster), _coordinator(cluster)
        w1, w2 = _worker("w1", queue_name), _worker("w2", queue_name)
        await w1.start()
        await w2.start()
        try:
            await coordinator.register_worker(w1)
            await coordinator.register_worker(w2)
            await coordinator.start()
            members = await coordinator.members()
            assert [m.worker_id for m in members] == ["w1", "w2"]
            for member in members:
                assert (member.state, member.type, member.queue) == (
                    "running",
                    "AsyncWorker",
                    queue_name,
                )
                assert member.current_jobs == 0 and member.alive and member.pid > 0
                assert abs(member.last_heartbeat - time.time()) < 5
            assert all(m.leader for m in members)  # the only node: it leads

            with pytest.raises(WorkerIdInUseError, match=r"'w1' is alive in cluster .*pid"):
                await other.register_worker(_worker("w1", queue_name))

            await w2.pause()
            await eventually(coordinator.members, lambda ms: _states(ms)["w2"] == "paused")
        finally:
            await coordinator.stop()
            await w1.shutdown(wait=False)
            await w2.shutdown(wait=False)
        try:
            assert await other.members(include_dead=True) == []
            assert await other.leader() is None
            # Unregistered: the id is free again.
            await other.register_worker(_worker("w1", queue_name))
        finally:
            await other.stop()

    run(main)


def test_a_silent_worker_leaves_the_membership_within_the_ttl(
    cluster: str, queue_name: str
) -> None:
    async def main() -> None:
        silent, watcher = _coordinator(cluster), _coordinator(cluster)
        worker, watched = _worker("silent", queue_name), _worker("watcher", queue_name)
        await watcher.register_worker(watched)
        await watcher.start()
        try:
            # Registered, then never heartbeats again: as a process killed at that moment.
            await silent.register_worker(worker)
            seen = await watcher.members()
            assert {m.worker_id for m in seen} == {"silent", "watcher"}
            t0 = time.monotonic()
            await eventually(watcher.members, lambda ms: [m.worker_id for m in ms] == ["watcher"])
            assert time.monotonic() - t0 <= silent.ttl_seconds + BEAT
            # Swept: not even listed as dead any more.
            await eventually(
                lambda: watcher.members(include_dead=True),
                lambda ms: [m.worker_id for m in ms] == ["watcher"],
            )
            # Its id can be taken again.
            await watcher.register_worker(_worker("silent", queue_name))
        finally:
            await watcher.stop()
            await silent._client.aclose()

    run(main)


def test_one_leader_with_growing_fencing_tokens_and_handover(cluster: str, queue_name: str) -> None:
    async def main() -> None:
        a, b = _coordinator(cluster), _coordinator(cluster, beat=1.0)
        await a.register_worker(_worker("a1", queue_name))
        await b.register_worker(_worker("b1", queue_name))
        await a.start()
        await b.start()
        try:
            assert a.is_leader and not b.is_leader
            first = a.fencing_token
            assert first is not None and await a.leader() == (first, a.node)
            t0 = time.monotonic()
            await a.stop()  # hands over: b is woken, it does not wait for its next beat
            await async_wait_until(lambda: b.is_leader, timeout=0.9)
            assert time.monotonic() - t0 < 0.9
            second = b.fencing_token
            assert second is not None and second > first
            assert await b.leader() == (second, b.node)
        finally:
            await a.stop()
            await b.stop()

    run(main)


def test_a_leader_that_stops_renewing_is_replaced_within_two_leases(
    cluster: str, queue_name: str
) -> None:
    async def main() -> None:
        a, b = _coordinator(cluster), _coordinator(cluster)
        await a.register_worker(_worker("a1", queue_name))
        await b.register_worker(_worker("b1", queue_name))
        await a.start()
        await b.start()
        try:
            assert a.is_leader
            first = a.fencing_token
            assert first is not None
            # Frozen: the loop stops without a goodbye, the lease is left to expire.
            for task in a._tasks:
                task.cancel()
            t0 = time.monotonic()
            await async_wait_until(lambda: b.is_leader, timeout=2 * b.leader_lease + 1)
            assert time.monotonic() - t0 <= 2 * b.leader_lease
            assert (b.fencing_token or 0) > first
        finally:
            a._lease = None  # it lost the lease; do not let stop() touch b's
            await a.stop()
            await b.stop()

    run(main)


def test_commands_reach_one_worker_or_all_and_survive_a_missed_message(
    cluster: str, queue_name: str
) -> None:
    async def main() -> None:
        coordinator, admin = _coordinator(cluster), _coordinator(cluster)
        w1, w2 = _worker("w1", queue_name), _worker("w2", queue_name)
        for worker in (w1, w2):
            await worker.start()
            await coordinator.register_worker(worker)
        # Sent before the coordinator listens: obeyed at its first tick all the same.
        await admin.pause("w1")
        await coordinator.start()
        try:
            assert (w1.state, w2.state) == ("paused", "running")
            await admin.pause()
            await async_wait_until(lambda: w2.state == "paused", timeout=BEAT * 2)
            await admin.resume("w2")
            await async_wait_until(lambda: w2.state == "running", timeout=BEAT * 2)
            assert w1.state == "paused"
            await admin.resume()
            await async_wait_until(lambda: w1.state == "running", timeout=BEAT * 2)
            await admin.shutdown("w2")
            await w2.wait_stopped()
            assert w1.state == "running"
            await eventually(admin.members, lambda ms: [m.worker_id for m in ms] == ["w1"])

            # A shutdown of all stops the workers registered then, not the ones after it.
            await admin.shutdown()
            await w1.wait_stopped()
            w3 = _worker("w3", queue_name)
            await w3.start()
            await coordinator.register_worker(w3)
            members = await eventually(
                admin.members, lambda ms: [m.worker_id for m in ms] == ["w3"]
            )
            assert members[0].state == "running" and w3.state == "running"
            await w3.shutdown()
        finally:
            await coordinator.stop()
            await admin.stop()
            for worker in (w1, w2):
                await worker.shutdown(wait=False)

    run(main)


def test_options_and_commands_are_checked(cluster: str) -> None:
    with pytest.raises(ConfigurationError, match="'heartbeat_interval'"):
        WorkerCoordinator(URL, cluster, heartbeat_interval=0)
    with pytest.raises(ConfigurationError, match="'cluster_id'"):
        WorkerCoordinator(URL, "a cluster")
    with pytest.raises(ConfigurationError, match="redis:// or rediss://"):
        WorkerCoordinator("amqp://localhost//", cluster)

    async def main() -> None:
        coordinator = _coordinator(cluster)
        try:
            with pytest.raises(ConfigurationError, match="unknown cluster command 'restart'"):
                await coordinator.send("restart")
        finally:
            await coordinator.stop()

    run(main)


def test_distributed_workers_hand_leadership_over_on_shutdown(
    cluster: str, queue_name: str
) -> None:
    from uno_jobs.worker import DistributedWorker

    def make(worker_id: str) -> DistributedWorker:
        return DistributedWorker(
            queue_name=queue_name,
            worker_id=worker_id,
            cluster_id=cluster,
            coordinator_url=URL,
            cluster_heartbeat_interval=1.0,
        )

    async def main() -> None:
        first, second = make("d1"), make("d2")
        await first.start()
        await second.start()
        try:
            members = await first.coordinator.members()
            assert [(m.worker_id, m.type, m.leader) for m in members] == [
                ("d1", "DistributedWorker", True),
                ("d2", "DistributedWorker", False),
            ]
            # The leader polls for due delayed jobs at full pace, the follower seldom.
            assert first._mover is not None and second._mover is not None
            assert (first._mover.interval, second._mover.interval) == (1.0, 10.0)
            twin = make("d1")
            with pytest.raises(WorkerIdInUseError):
                await twin.start()
            assert twin.state == "initialized"  # refused before it consumed anything
            t0 = time.monotonic()
            await first.shutdown()
            # Woken by the hand-over, not by its next heartbeat a second later.
            await async_wait_until(lambda: second.coordinator.is_leader, timeout=0.9)
            assert time.monotonic() - t0 < 0.9
            members = await second.coordinator.members()
            assert [(m.worker_id, m.leader) for m in members] == [("d2", True)]
            assert second._mover.interval == 1.0
        finally:
            await first.shutdown(wait=False)
            await second.shutdown(wait=False)

    run(main)


def test_distributed_worker_options_are_checked(cluster: str) -> None:
    from uno_jobs.worker import DistributedWorker

    with pytest.raises(ConfigurationError, match="'cluster_hearbeat'"):
        DistributedWorker(cluster_id=cluster, coordinator_url=URL, cluster_hearbeat=1)
    with pytest.raises(ConfigurationError, match="coordinator_url"):
        DistributedWorker(cluster_id=cluster, broker_url="embedded://")


def test_cli_cluster_status_and_commands(cluster: str, queue_name: str) -> None:
    import subprocess
    import sys

    from uno_jobs.worker import DistributedWorker

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "uno_jobs.cli",
                "cluster",
                *args,
                "--cluster",
                cluster,
                "--coordinator",
                URL,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    async def main() -> None:
        worker = DistributedWorker(
            queue_name=queue_name,
            worker_id="cli-1",
            cluster_id=cluster,
            coordinator_url=URL,
            cluster_heartbeat_interval=BEAT,
        )
        await worker.start()
        try:
            status = await asyncio.to_thread(cli, "status")
            assert status.returncode == 0, status.stderr
            lines = status.stdout.splitlines()
            assert lines[0].split() == [
                "WORKER",
                "STATE",
                "TYPE",
                "QUEUE",
                "HOST",
                "PID",
                "JOBS",
                "HEARTBEAT",
                "LEADER",
            ]
            row = lines[1].split()
            assert row[:4] == ["cli-1", "running", "DistributedWorker", queue_name]
            assert row[5] == str(os.getpid()) and row[-1] == "*"
            assert "fencing token" in status.stderr

            missing = await asyncio.to_thread(cli, "pause", "nosuch")
            assert missing.returncode == 1
            assert f"no live worker 'nosuch' in cluster '{cluster}'" in missing.stderr

            paused = await asyncio.to_thread(cli, "pause", "cli-1")
            assert paused.returncode == 0 and "pause sent to worker cli-1" in paused.stdout
            await async_wait_until(lambda: worker.state == "paused", timeout=BEAT * 3)
            as_json = await asyncio.to_thread(cli, "status", "--json")
            workers = json.loads(as_json.stdout)["workers"]
            assert [(w["worker_id"], w["state"]) for w in workers] == [("cli-1", "paused")]

            stopped = await asyncio.to_thread(cli, "shutdown")
            assert "shutdown sent to every worker" in stopped.stdout
            await asyncio.wait_for(worker.wait_stopped(), 10)
            empty = await asyncio.to_thread(cli, "status")
            assert empty.returncode == 0 and "no workers in cluster" in empty.stderr
        finally:
            await worker.shutdown(wait=False)

    run(main)


def test_cli_worker_of_type_distributed_obeys_a_cluster_shutdown(
    cluster: str, queue_name: str
) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "uno_jobs.cli", "worker", "--queue", queue_name]
    wrong = subprocess.run(
        [*command, "--type", "async", "--cluster", cluster],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "--cluster: only for --type distributed" in wrong.stderr

    where = ["--cluster", cluster, "--coordinator", URL, "--worker-id", "cli-worker"]
    proc = subprocess.Popen(
        [*command, "--type", "distributed", *where],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    async def main() -> None:
        admin = _coordinator(cluster)
        try:
            members = await eventually(
                admin.members, lambda ms: [m.worker_id for m in ms] == ["cli-worker"], 30
            )
            assert members[0].type == "DistributedWorker" and members[0].pid == proc.pid
            await admin.shutdown("cli-worker")
            assert await asyncio.to_thread(proc.wait, 30) == 0
            assert await admin.members(include_dead=True) == []
        finally:
            await admin.stop()

    try:
        run(main)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=30)
    assert "shutting down cli-worker" in stderr, stderr
