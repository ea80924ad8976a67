"""ProcessPoolWorker: jobs run in supervised child processes.

Everything runs on the embedded broker; the basic case runs on Redis and RabbitMQ too.
The tasks live in ``process_tasks`` so that each spawned child can import them by name
(the children get the parent's ``sys.path``, which holds ``tests/integration``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import process_tasks  # noqa: F401 - registers the proc.* tasks
import pytest
from conftest import async_wait_until, make_broker_url, wait_until

from uno_jobs import JobFailedError, JobStatus, ProcessPoolWorker, Queue
from uno_jobs.errors import ConfigurationError, WorkerStateError
from uno_jobs.middleware import Middleware
from uno_jobs.worker._registry import get_worker_type

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def run(main: Callable[[], Any]) -> None:
    asyncio.run(main())


def gone(pid: int) -> bool:
    """True once ``pid`` is neither running nor a zombie (it was reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@asynccontextmanager
async def pool(
    queue_name: str, broker_url: str = "embedded://", **options: Any
) -> AsyncIterator[tuple[Queue, ProcessPoolWorker]]:
    """A queue and a started ProcessPoolWorker; an immediate shutdown at the end."""
    queue = Queue(queue_name, broker_url=broker_url)
    worker = ProcessPoolWorker(queue_name=queue_name, broker_url=broker_url, **options)
    try:
        await worker.start()
        try:
            yield queue, worker
        finally:
            pids = worker.child_pids
            await worker.shutdown(wait=False)
            assert all(gone(pid) for pid in pids), pids
    finally:
        await queue.delete()
        queue.close()


@pytest.mark.parametrize("kind", ["embedded", "redis", "amqp"])
def test_jobs_run_in_child_processes(kind: str, uno_home: Path, queue_name: str) -> None:
    url, cleanup = make_broker_url(kind)

    async def main() -> None:
        async with pool(queue_name, url, max_processes=2) as (queue, worker):
            children = set(worker.child_pids)
            assert len(children) == 2 and os.getpid() not in children
            jobs = [await queue.enqueue("proc.pid", [i]) for i in range(4)]
            async_job = await queue.enqueue("proc.async_pid", [21])
            results = [await job.wait(timeout=20) for job in jobs]
            assert [r["value"] for r in results] == [0, 1, 2, 3]
            assert {r["pid"] for r in results} <= children
            async_result = await async_job.wait(timeout=20)
            assert async_result["value"] == 42 and async_result["pid"] in children
            record = await queue.get_job(jobs[0].id)
            assert record.status == JobStatus.SUCCEEDED
            assert record.worker_id == worker.worker_id
            assert (await worker.get_metrics())["jobs_succeeded"] == 5

    try:
        run(main)
    finally:
        cleanup()


def test_is_a_registered_worker_type_with_validated_options() -> None:
    assert get_worker_type("process") is ProcessPoolWorker
    assert ProcessPoolWorker(max_processes=3).concurrency == 3
    assert ProcessPoolWorker().concurrency == (os.cpu_count() or 1)
    with pytest.raises(ConfigurationError, match="max_tasks_per_child"):
        ProcessPoolWorker(max_tasks_per_child=0)
    with pytest.raises(ConfigurationError, match="max_memory_per_child_mb"):
        ProcessPoolWorker(max_memory_per_child_mb=-1)
    with pytest.raises(ConfigurationError, match="max_processes"):
        ProcessPoolWorker(max_processes=0)


def test_task_exceptions_keep_their_type_message_and_child_traceback(
    uno_home: Path, queue_name: str
) -> None:
    async def main() -> None:
        async with pool(queue_name, max_processes=1) as (queue, _):
            plain = await queue.enqueue("proc.fail", ["it broke"])
            odd = await queue.enqueue("proc.fail_unpicklable", ["no way back"])
            for job in (plain, odd):
                with pytest.raises(JobFailedError):
                    await job.wait(timeout=20)
            record = await queue.get_job(plain.id)
            assert (record.status, record.error_type) == (JobStatus.FAILED, "ValueError")
            assert record.error_message == "it broke"
            # The child's own traceback, with the task's frame, is part of the record.
            assert record.error_traceback and "process_tasks.py" in record.error_traceback
            assert 'raise ValueError(message)\nValueError: it broke\n"""' in record.error_traceback
            # An exception that cannot be unpickled in the parent keeps its name and text.
            record = await queue.get_job(odd.id)
            assert record.error_type == "Unpicklable"
            assert record.error_message == "code 7: no way back"
            assert record.error_traceback and "raise Unpicklable(7, detail)" in (
                record.error_traceback
            )
            # A result that cannot travel back fails the job and says why.
            bad = await queue.enqueue("proc.bad_result")
            with pytest.raises(JobFailedError, match="result cannot be sent to the worker"):
                await bad.wait(timeout=20)
            assert (await queue.get_job(bad.id)).error_type == "TypeError"

    run(main)


def test_time_limit_kills_only_that_child(uno_home: Path, queue_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with pool(queue_name, max_processes=2) as (queue, worker):
            before = set(worker.child_pids)
            spinner = await queue.enqueue("proc.spin", [str(tmp_path)])  # timeout=1
            other = await queue.enqueue("proc.hold", [str(tmp_path), "other", 1.5])
            await async_wait_until(lambda: list(tmp_path.glob("other.*")), timeout=10)
            await async_wait_until(lambda: list(tmp_path.glob("spin.*")), timeout=10)
            spin_pid = int(next(tmp_path.glob("spin.*")).suffix[1:])
            with pytest.raises(JobFailedError):
                await spinner.wait(timeout=10)
            record = await queue.get_job(spinner.id)
            assert record.error_type == "JobTimeLimitExceeded"
            assert record.dead_reason == "timeout"
            assert record.started_at is not None and record.finished_at is not None
            assert 1.0 <= record.finished_at - record.started_at < 2.0
            # The other child was left alone and finished its job.
            other_pid = int(next(tmp_path.glob("other.*")).suffix[1:])
            assert (await other.wait(timeout=10))["pid"] == other_pid
            assert other_pid in before and spin_pid in before and other_pid != spin_pid
            await async_wait_until(lambda: gone(spin_pid), timeout=5)
            await async_wait_until(lambda: len(worker.child_pids) == 2, timeout=10)
            assert other_pid in worker.child_pids
            assert (await (await queue.enqueue("proc.pid", [1])).wait(timeout=20))["value"] == 1

    run(main)


def test_child_killed_mid_job_is_replaced_and_the_job_delivered_again(
    uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with pool(queue_name, max_processes=1) as (queue, worker):
            (first_pid,) = worker.child_pids
            job = await queue.enqueue("proc.kill_first", [str(tmp_path)])
            result = await job.wait(timeout=20)
            assert int((tmp_path / "killed-once").read_text()) == first_pid
            assert result["pid"] != first_pid and result["pid"] in worker.child_pids
            assert gone(first_pid)
            record = await queue.get_job(job.id)
            assert record.status == JobStatus.SUCCEEDED
            assert record.worker_lost == 1
            assert record.attempts == 1  # a lost worker is not a failed attempt

    run(main)


def test_task_that_always_kills_its_child_ends_dead_and_the_worker_goes_on(
    uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with pool(queue_name, max_processes=1) as (queue, worker):
            job = await queue.enqueue("proc.kill_always", [str(tmp_path)])
            with pytest.raises(JobFailedError) as info:
                await job.wait(timeout=30)
            assert info.value.status == "dead"
            record = await queue.get_job(job.id)
            assert (record.status, record.dead_reason) == (JobStatus.DEAD, "worker_lost")
            assert record.worker_lost == 3
            assert len(list(tmp_path.glob("kill.*"))) == 3  # three children, each killed
            dead = [d.job_id for d in await queue.dead_letters()]
            assert dead == [job.id]
            # A child that exits by itself mid-job is a lost worker too.
            exiting = await queue.enqueue("proc.exit_hard", [3])
            after = await queue.enqueue("proc.pid", [7])
            assert (await after.wait(timeout=20))["value"] == 7
            # It is handed back and dies twice more (a child each time), then is dead.
            with pytest.raises(JobFailedError) as info:
                await exiting.wait(timeout=30)
            assert info.value.status == "dead"
            assert queue.get_job_sync(exiting.id).worker_lost == 3
            # The pool is back to one live child and still takes jobs.
            assert (await (await queue.enqueue("proc.pid", [8])).wait(timeout=20))["value"] == 8
            await async_wait_until(lambda: len(worker.child_pids) == 1, timeout=10)
            assert (await worker.get_health())["status"] == "healthy"

    run(main)


def test_an_idle_child_that_dies_is_replaced(uno_home: Path, queue_name: str) -> None:
    async def main() -> None:
        async with pool(queue_name, max_processes=2) as (queue, worker):
            victim, survivor = worker.child_pids
            os.kill(victim, signal.SIGKILL)
            await async_wait_until(
                lambda: victim not in worker.child_pids and len(worker.child_pids) == 2,
                timeout=10,
            )
            assert gone(victim) and survivor in worker.child_pids
            jobs = [await queue.enqueue("proc.pid", [i]) for i in range(4)]
            assert [(await j.wait(timeout=20))["value"] for j in jobs] == [0, 1, 2, 3]

    run(main)


def test_max_tasks_per_child_recycles_children(uno_home: Path, queue_name: str) -> None:
    async def main() -> None:
        async with pool(queue_name, max_processes=1, max_tasks_per_child=2) as (queue, _):
            jobs = [await queue.enqueue("proc.pid", [i]) for i in range(5)]
            pids = [(await job.wait(timeout=20))["pid"] for job in jobs]
            assert len(set(pids)) >= 3, pids
            assert all(pids.count(pid) <= 2 for pid in pids), pids
            assert all(gone(pid) for pid in set(pids[:4])), pids

    run(main)


def test_memory_ceiling_recycles_a_child_after_its_job(uno_home: Path, queue_name: str) -> None:
    async def main() -> None:
        async with pool(queue_name, max_processes=1, max_memory_per_child_mb=200) as (queue, _):
            small = await (await queue.enqueue("proc.pid")).wait(timeout=20)
            again = await (await queue.enqueue("proc.pid")).wait(timeout=20)
            assert small["pid"] == again["pid"]  # well under the ceiling: kept
            grown = await (await queue.enqueue("proc.grow", [300])).wait(timeout=20)
            assert grown == small["pid"]  # the job itself completes normally
            after = await (await queue.enqueue("proc.pid")).wait(timeout=20)
            assert after["pid"] != small["pid"]
            await async_wait_until(lambda: gone(small["pid"]), timeout=10)

    run(main)


def test_graceful_shutdown_waits_for_the_running_child_job(
    uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        queue = Queue(queue_name)
        worker = ProcessPoolWorker(queue_name=queue_name, max_processes=2)
        await worker.start()
        try:
            pids = worker.child_pids
            job = await queue.enqueue("proc.hold", [str(tmp_path), "held", 1.0])
            await async_wait_until(lambda: list(tmp_path.glob("held.*")), timeout=10)
            await worker.shutdown()
            record = await queue.get_job(job.id)
            assert record.status == JobStatus.SUCCEEDED
            assert record.result["pid"] in pids
            assert worker.child_pids == []
            assert all(gone(pid) for pid in pids)
        finally:
            await worker.shutdown(wait=False)
            await queue.delete()
            queue.close()

    run(main)


def test_immediate_shutdown_kills_every_child(
    uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        queue = Queue(queue_name)
        worker = ProcessPoolWorker(queue_name=queue_name, max_processes=2)
        await worker.start()
        try:
            pids = worker.child_pids
            job = await queue.enqueue("proc.hold", [str(tmp_path), "held", 30])
            await async_wait_until(lambda: list(tmp_path.glob("held.*")), timeout=10)
            started = time.monotonic()
            await worker.shutdown(wait=False)
            assert time.monotonic() - started < 5
            assert all(gone(pid) for pid in pids), pids
            assert (await queue.get_job(job.id)).status == JobStatus.QUEUED
        finally:
            await queue.delete()
            queue.close()

    run(main)


class PidMiddleware(Middleware):
    """Records the process each hook runs in."""

    def __init__(self) -> None:
        self.pids: list[tuple[str, int]] = []

    async def before_execution(self, job: Any, task_func: Callable[..., Any]) -> None:
        self.pids.append(("before", os.getpid()))

    async def after_execution(self, job: Any, task_func: Callable[..., Any], result: Any) -> Any:
        self.pids.append(("after", os.getpid()))
        return {**result, "seen_by": "middleware"}

    async def on_error(self, job: Any, task_func: Callable[..., Any], exc: BaseException) -> None:
        self.pids.append(("error", os.getpid()))


def test_middleware_runs_in_the_worker_process(uno_home: Path, queue_name: str) -> None:
    middleware = PidMiddleware()

    async def main() -> None:
        async with pool(queue_name, max_processes=1, middleware=[middleware]) as (queue, _):
            result = await (await queue.enqueue("proc.pid", [5])).wait(timeout=20)
            with pytest.raises(JobFailedError):
                await (await queue.enqueue("proc.fail", ["x"])).wait(timeout=20)
            assert result["seen_by"] == "middleware" and result["pid"] != os.getpid()
            me = os.getpid()
            assert middleware.pids == [("before", me), ("after", me), ("before", me), ("error", me)]

    run(main)


PROBE_PLUGIN = """
import os
from pathlib import Path

from uno_jobs import hookimpl


@hookimpl
def uno_jobs_child_boot():
    if os.environ.get("UNO_BOOT_PROBE_FAIL"):
        raise RuntimeError("probe refuses to boot")
    Path(os.environ["UNO_BOOT_PROBE_DIR"], str(os.getpid())).write_text("booted")
"""


@pytest.fixture
def boot_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed plugin (a dist-info on sys.path, which spawned children inherit)
    whose child-boot hook leaves a marker named after the child's pid."""
    site = tmp_path / "site"
    dist = site / "uno_boot_probe-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: uno-boot-probe\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[uno_jobs]\nboot_probe = uno_boot_probe\n")
    (site / "uno_boot_probe.py").write_text(PROBE_PLUGIN)
    markers = tmp_path / "booted"
    markers.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("UNO_BOOT_PROBE_DIR", str(markers))
    return markers


def test_children_run_the_child_boot_hook(
    uno_home: Path, queue_name: str, boot_probe: Path
) -> None:
    async def main() -> None:
        async with pool(queue_name, max_processes=2) as (_, worker):
            booted = {int(p.name) for p in boot_probe.iterdir()}
            assert booted == set(worker.child_pids)
            assert os.getpid() not in booted

    run(main)


def test_a_child_that_cannot_boot_fails_start(
    uno_home: Path, queue_name: str, boot_probe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNO_BOOT_PROBE_FAIL", "1")

    before = _pool_children()

    async def main() -> None:
        worker = ProcessPoolWorker(queue_name=queue_name, max_processes=2)
        with pytest.raises(WorkerStateError, match="probe refuses to boot"):
            await worker.start()
        assert worker.state == "stopped"

    run(main)
    assert not list(boot_probe.iterdir())
    assert _pool_children() == before  # the children that did start are gone (reaped)


def _pool_children() -> set[int]:
    """This process's children, except multiprocessing's long-lived resource tracker."""
    found = set()
    for pid in _children_of(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            found.add(pid)
    return found


# -- whole programs ---------------------------------------------------------------------

SCRIPT = """
import asyncio, os, sys
from uno_jobs import ProcessPoolWorker, Queue, task


@task
def double(x):
    return {"value": 2 * x, "pid": os.getpid()}


async def main():
    queue = Queue(sys.argv[1])
    worker = ProcessPoolWorker(queue_name=sys.argv[1], max_processes=1)
    await worker.start()
    try:
        job = await queue.enqueue(double, [21])
        result = await job.wait(timeout=20)
        record = await queue.get_job(job.id)
        print(record.task, result["value"], result["pid"] != os.getpid())
    finally:
        await worker.shutdown()
        await queue.delete()
        queue.close()


if __name__ == "__main__":
    asyncio.run(main())
"""


def test_tasks_of_a_script_run_as_main(uno_home: Path, queue_name: str, tmp_path: Path) -> None:
    # The task is registered as "__main__.double"; the child re-imports the script as
    # __mp_main__ and finds the same function there.
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script), queue_name],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "UNO_JOBS_HOME": str(uno_home)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["__main__.double 42 True"], proc.stderr


def _children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        found.update(int(p) for p in children.read_text().split())
    return found


def test_children_exit_when_the_worker_is_killed(uno_home: Path, queue_name: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "uno_jobs.cli",
        "--log-level",
        "WARNING",
        "worker",
        "--type",
        "process",
        "--concurrency",
        "2",
        "--app",
        "process_tasks",
        "--queue",
        queue_name,
    ]
    env = {**os.environ, "PYTHONPATH": str(HERE), "UNO_JOBS_HOME": str(uno_home)}
    worker = subprocess.Popen(cmd, env=env, cwd=REPO)
    try:
        # Two children plus multiprocessing's resource tracker.
        wait_until(lambda: len(_children_of(worker.pid)) >= 3, timeout=20)
        children = _children_of(worker.pid)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        wait_until(lambda: all(gone(pid) or _is_zombie(pid) for pid in children), timeout=5)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def _is_zombie(pid: int) -> bool:
    # Orphans are re-parented and reaped by init, or linger as zombies of a sub-reaper.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
