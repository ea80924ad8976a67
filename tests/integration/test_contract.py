"""The contract suite: the same behaviour on every broker and every worker type.

Parametrised over the embedded broker, Redis and RabbitMQ (``broker_url``) and the worker
types (``worker_type``). Each test uses its own queue and deletes it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import contract_tasks  # noqa: F401 - registers the contract.* tasks
import pytest
from conftest import async_wait_until, make_broker_url, opened, run, running

from uno_jobs import JobFailedError, JobStatus, Queue
from uno_jobs.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DuplicateJobError,
    PayloadError,
)
from uno_jobs.queue import JobSpec
from uno_jobs.worker import BaseWorker
from uno_jobs.worker._registry import get_worker_type

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REPO = HERE.parent.parent


@pytest.fixture(params=["sync", "thread", "async", "process"])
def worker_type(request: pytest.FixtureRequest) -> type[BaseWorker]:
    return get_worker_type(request.param)


def make_worker(cls: type[BaseWorker], queue: Queue, **options: Any) -> BaseWorker:
    if cls.options_model.concurrency_option and "concurrency" in options:
        options[cls.options_model.concurrency_option] = options.pop("concurrency")
    options.pop("concurrency", None)
    return cls(queue_name=queue.name, broker_url=queue.broker_url, **options)


def test_job_succeeds_with_result(
    broker_url: str, worker_type: type[BaseWorker], queue_name: str
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(make_worker(worker_type, queue, concurrency=2)) as worker:
                sync_job = await queue.enqueue("contract.add", [2, 3])
                async_job = await queue.enqueue("contract.async_add", kwargs={"a": 4, "b": 5})
                assert await sync_job.wait(timeout=15) == 5
                assert await async_job.wait(timeout=15) == 9
                record = await queue.get_job(sync_job.id)
                assert record.status == JobStatus.SUCCEEDED
                assert record.attempts == 1
                assert record.worker_id == worker.worker_id
                assert record.enqueued_at is not None and record.started_at is not None
                assert record.finished_at is not None
                assert record.enqueued_at <= record.started_at <= record.finished_at
                metrics = await worker.get_metrics()
                assert metrics["jobs_succeeded"] == 2

    run(main)


def test_failing_job_records_its_error(
    broker_url: str, worker_type: type[BaseWorker], queue_name: str
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(make_worker(worker_type, queue)):
                job = await queue.enqueue("contract.fail", ["it broke"])
                with pytest.raises(JobFailedError) as info:
                    await job.wait(timeout=15)
                assert info.value.status == "failed"
                record = await queue.get_job(job.id)
                assert record.status == JobStatus.FAILED
                assert record.error_type == "ValueError"
                assert record.error_message == "it broke"
                assert record.error_traceback and "ValueError: it broke" in record.error_traceback

    run(main)


def test_unrunnable_jobs_are_dead_lettered(broker_url: str, queue_name: str) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            worker = make_worker(
                get_worker_type("async"), queue, allowed_modules=["contract_tasks"]
            )
            async with running(worker):
                unknown = await queue.enqueue("no_such_task")
                forbidden = await queue.enqueue("os.system", ["echo pwned"])
                not_a_task = await queue.enqueue("contract_tasks.helper")
                by_path = await queue.enqueue("contract_tasks.add", [1, 1])
                assert await by_path.wait(timeout=15) == 2
                reasons = {}
                for job in (unknown, forbidden, not_a_task):
                    with pytest.raises(JobFailedError) as info:
                        await job.wait(timeout=15)
                    assert info.value.status == "dead"
                    reasons[job.id] = (await queue.get_job(job.id)).dead_reason
                assert reasons == {
                    unknown.id: "unknown_task",
                    forbidden.id: "forbidden_task",
                    not_a_task.id: "forbidden_task",
                }
                dead_ids = {d.job_id for d in await queue.dead_letters()}
                assert dead_ids == set(reasons)
            # After shutdown every dead letter is published and acked.
            sizes = await queue.sizes()
            assert sizes[f"{queue.name}.dead"] == 3

    run(main)


def test_bad_enqueue_arguments_publish_nothing(broker_url: str, queue_name: str) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            with pytest.raises(PayloadError, match=r"contract\.add"):
                await queue.enqueue("contract.add", [object()])
            with pytest.raises(ConfigurationError, match="urgent"):
                await queue.enqueue("contract.add", [1, 2], priority="urgent")
            with pytest.raises(ConfigurationError, match="delay"):
                await queue.enqueue("contract.add", [1, 2], delay=-1)
            first = await queue.enqueue("contract.add", [1, 2], job_id="job-1")
            with pytest.raises(DuplicateJobError, match="job-1"):
                await queue.enqueue("contract.add", [1, 2], job_id="job-1")
            assert first.id == "job-1"
            assert await queue.size() == 1

    run(main)


def test_a_queue_deleted_then_enqueued_to_again_keeps_the_job(
    broker_url: str, queue_name: str
) -> None:
    # The publisher had declared the queue before it was deleted: it must declare it
    # again (Redis dropped such a message as undeliverable; RabbitMQ refused it).
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            await queue.enqueue("contract.add", [1, 1])
            await queue.delete()
            await queue.enqueue("contract.add", [2, 2])
            assert await queue.size() == 1

    run(main)


def test_sync_and_bulk_enqueue(broker_url: str, queue_name: str) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            single = await asyncio.to_thread(queue.enqueue_sync, "contract.add", [1, 2])
            many = await queue.enqueue_many(JobSpec("contract.add", [i, i]) for i in range(50))
            assert await queue.size() == 51
            async with running(make_worker(get_worker_type("async"), queue, concurrency=10)):
                assert await single.wait(timeout=15) == 3
                assert [await h.wait(timeout=15) for h in many] == [2 * i for i in range(50)]

    run(main)


def test_pause_stops_new_starts_and_resume_restarts(
    broker_url: str, worker_type: type[BaseWorker], queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(make_worker(worker_type, queue, concurrency=2)) as worker:
                await worker.pause()
                jobs = [
                    await queue.enqueue("contract.mark", [str(tmp_path), f"p{i}"]) for i in range(4)
                ]
                # An observation window: nothing may start while paused.
                await asyncio.sleep(0.7)
                assert not list(tmp_path.glob("p*"))
                assert worker.stats.processed == 0
                await worker.resume()
                for job in jobs:
                    await job.wait(timeout=15)
                assert len(list(tmp_path.glob("p*"))) == 4

    run(main)


def test_graceful_shutdown_hands_back_prefetched_jobs(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            worker = make_worker(get_worker_type("sync"), queue, batch_size=5, shutdown_timeout=20)
            release = tmp_path / "release"
            slow = await queue.enqueue("contract.hold_until", [str(tmp_path), "slow", str(release)])
            quick = [
                await queue.enqueue("contract.mark", [str(tmp_path), f"q{i}"]) for i in range(5)
            ]
            await worker.start()
            await async_wait_until(lambda: list(tmp_path.glob("slow.*")), timeout=15)
            # The window is 1 running + batch_size 5: all five quick jobs get prefetched.
            await async_wait_until(
                lambda: worker._consumer is not None and worker._consumer.held == 6, timeout=15
            )
            stopping = asyncio.ensure_future(worker.shutdown())
            await async_wait_until(lambda: worker.state == "shutting_down", timeout=5)
            release.touch()
            await stopping
            assert (await queue.get_job(slow.id)).status == JobStatus.SUCCEEDED
            assert not list(tmp_path.glob("q*")), "prefetched jobs must not have run"
            assert await queue.size() == 5
            async with running(make_worker(get_worker_type("async"), queue, concurrency=5)):
                for job in quick:
                    await job.wait(timeout=15)

    run(main)


def test_immediate_shutdown_hands_back_running_job(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            worker = make_worker(get_worker_type("thread"), queue, concurrency=1)
            release = tmp_path / "release"
            job = await queue.enqueue("contract.hold_until", [str(tmp_path), "long", str(release)])
            await worker.start()
            await async_wait_until(lambda: list(tmp_path.glob("long.*")), timeout=15)
            await worker.shutdown(wait=False)
            assert (await queue.get_job(job.id)).status == JobStatus.QUEUED
            # The abandoned run now finishes in its thread; its result must be dropped.
            release.touch()
            async with running(make_worker(get_worker_type("async"), queue)):
                assert await job.wait(timeout=20) == "long"
            assert len(list(tmp_path.glob("long.*"))) == 2
            record = await queue.get_job(job.id)
            assert record.status == JobStatus.SUCCEEDED and record.attempts == 1

    run(main)


def test_delayed_job_runs_when_due(broker_url: str, queue_name: str) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            job = await queue.enqueue("contract.add", [20, 22], delay=1.0)
            assert (await queue.get_job(job.id)).status == JobStatus.SCHEDULED
            assert await queue.size() == 0
            async with running(make_worker(get_worker_type("async"), queue, poll_interval=0.2)):
                assert await job.wait(timeout=15) == 42
            record = await queue.get_job(job.id)
            assert record.started_at is not None and record.enqueued_at is not None
            assert record.started_at - record.enqueued_at >= 1.0

    run(main)


@pytest.mark.parametrize("kind", ["embedded", "redis", "amqp", "sqs"])
def test_sigkilled_worker_job_is_delivered_again(
    kind: str, uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    url, cleanup = make_broker_url(kind, visibility_timeout=2.0)
    env = {**os.environ, "PYTHONPATH": str(HERE), "UNO_JOBS_HOME": str(uno_home)}
    cmd = [
        sys.executable,
        "-m",
        "uno_jobs.cli",
        "--log-level",
        "WARNING",
        "worker",
        "--app",
        "contract_tasks",
        "--queue",
        queue_name,
        "--broker",
        url,
        "--type",
        "async",
    ]
    victims: list[subprocess.Popen[bytes]] = []

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            job = await queue.enqueue("contract.hold_first", [str(tmp_path), "victim", 60])
            first = subprocess.Popen(cmd, env=env, cwd=REPO)
            victims.append(first)
            await async_wait_until(lambda: list(tmp_path.glob("victim.*")), timeout=20)
            # A lost worker is counted from its job's record: wait until "running" is in.
            await async_wait_until(
                lambda: queue.get_job_sync(job.id).status == JobStatus.RUNNING, timeout=10
            )
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = subprocess.Popen(cmd, env=env, cwd=REPO)
            victims.append(second)
            assert await job.wait(timeout=30) == "victim"
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
            record = await queue.get_job(job.id)
            assert record.status == JobStatus.SUCCEEDED
            assert record.worker_lost == 1
            assert len(list(tmp_path.glob("victim.*"))) == 2

    try:
        run(main)
    finally:
        for proc in victims:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        cleanup()


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:1//",
        "redis://127.0.0.1:1/0",
        "embedded:///proc/forbidden/x.db",
    ],
)
def test_unreachable_broker_fails_fast(url: str, uno_home: Path, queue_name: str) -> None:
    async def main() -> None:
        queue = Queue(queue_name, broker_url=url, store_url="memory://")
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as info:
            await queue.enqueue("contract.add", [1, 2], job_id="never-published")
        assert time.monotonic() - started < 8
        assert "guest:guest" not in str(info.value)
        assert queue.store.get("never-published") is None, "a failed enqueue leaves no record"
        worker = get_worker_type("async")(
            queue_name=queue_name, broker_url=url, store_url="memory://"
        )
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            await worker.start()
        assert time.monotonic() - started < 8
        queue.close()

    run(main)


@pytest.mark.parametrize("kind", ["embedded", "redis", "amqp", "sqs"])
@pytest.mark.parametrize("window", ["open", "full"])
def test_long_job_is_not_redelivered_while_its_worker_lives(
    kind: str, window: str, uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    url, cleanup = make_broker_url(kind, visibility_timeout=1.5)
    # "full": a SyncWorker without prefetch holds one message, so its window is full while
    # the job runs and the consumer does not poll the broker.
    first_type, first_options = ("async", {}) if window == "open" else ("sync", {"prefetch": False})

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            first = make_worker(
                get_worker_type(first_type), queue, worker_id="first", **first_options
            )
            second = make_worker(get_worker_type("async"), queue, worker_id="second")
            async with running(first):
                job = await queue.enqueue("contract.mark", [str(tmp_path), "long", 4.0])
                await async_wait_until(lambda: list(tmp_path.glob("long.*")), timeout=15)
                async with running(second):
                    assert await job.wait(timeout=20) == "long"
                    # Past two visibility timeouts, and the job ran once.
                    assert len(list(tmp_path.glob("long.*"))) == 1
                    assert (await queue.get_job(job.id)).worker_id == "first"

    try:
        run(main)
    finally:
        cleanup()


@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_worker_reconnects_after_the_connection_drops(
    kind: str, uno_home: Path, queue_name: str
) -> None:
    from tcp_proxy import TcpProxy

    direct_url, cleanup = make_broker_url(kind, visibility_timeout=3.0)
    port = 5672 if kind == "amqp" else 6379
    proxy = TcpProxy("127.0.0.1", port)
    proxied_url = direct_url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy.port}")
    assert proxied_url != direct_url

    async def main() -> None:
        async with opened(queue_name, direct_url) as queue:
            worker = get_worker_type("async")(
                queue_name=queue.name, broker_url=proxied_url, store_url=queue.store_url
            )
            async with running(worker):
                first = await queue.enqueue("contract.add", [1, 1])
                assert await first.wait(timeout=15) == 2
                connections_before = proxy.accepted
                proxy.cut()
                second = await queue.enqueue("contract.add", [2, 2])
                assert await second.wait(timeout=20) == 4
                assert proxy.accepted > connections_before, "the worker reconnected"

    try:
        run(main)
    finally:
        proxy.close()
        cleanup()


def test_failed_attempts_are_retried_until_max_retries(
    broker_url: str, worker_type: type[BaseWorker], queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(make_worker(worker_type, queue, concurrency=2)):
                recovers = await queue.enqueue("contract.flaky", [str(tmp_path), "r", 2])
                gives_up = await queue.enqueue("contract.flaky", [str(tmp_path), "g", 5])
                assert await recovers.wait(timeout=20) == 3
                with pytest.raises(JobFailedError, match="attempt 3 fails"):
                    await gives_up.wait(timeout=20)
            record = await queue.get_job(recovers.id)
            assert record.status == JobStatus.SUCCEEDED and record.attempts == 3
            failed = await queue.get_job(gives_up.id)
            assert failed.status == JobStatus.FAILED and failed.attempts == 3
            assert len(list(tmp_path.glob("g.*"))) == 3, "max_retries=2: three attempts"

    run(main)


def test_delayed_retry_waits_in_the_store(broker_url: str, queue_name: str, tmp_path: Path) -> None:
    """In the store's schedule; on SQS, held by SQS itself (DelaySeconds, test_sqs.py)."""
    in_sqs = broker_url.startswith("sqs://")

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            worker = make_worker(get_worker_type("async"), queue, poll_interval=0.1)
            async with running(worker):
                job = await queue.enqueue("contract.flaky_later", [str(tmp_path), "d", 1])
                await async_wait_until(lambda: list(tmp_path.glob("d.*")), timeout=15)
                # The status is written first, then the schedule entry.
                await async_wait_until(
                    lambda: (
                        queue.get_job_sync(job.id).status == JobStatus.SCHEDULED
                        and queue.store.scheduled_count() == (0 if in_sqs else 1)
                    ),
                    timeout=5,
                )
                assert await queue.size() == 0, "a delayed retry is not on the broker yet"
                assert await job.wait(timeout=15) == 2
            starts = sorted(float(p.read_text()) for p in tmp_path.glob("d.*"))
            assert starts[1] - starts[0] >= 0.5

    run(main)


def test_an_unconfirmed_publish_raises_instead_of_hanging(uno_home: Path, queue_name: str) -> None:
    """RabbitMQ stops answering (as under a memory alarm): enqueue gives up at the timeout."""
    from tcp_proxy import TcpProxy

    proxy = TcpProxy("127.0.0.1", 5672)
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}//?confirm_timeout=1"

    async def main() -> None:
        queue = Queue(queue_name, broker_url=url, store_url="memory://confirm-test")
        try:
            first = await queue.enqueue("contract.add", [1, 1])
            assert first.id
            proxy.pause()
            started = time.monotonic()
            with pytest.raises(BrokerUnavailableError, match="not confirmed within 1 s"):
                await queue.enqueue("contract.add", [2, 2], job_id="unconfirmed")
            assert time.monotonic() - started < 8, "it gave up, it did not hang"
            assert queue.store.get("unconfirmed") is None, "a failed enqueue leaves no record"
        finally:
            proxy.resume()
            await queue.delete()
            queue.close()

    try:
        run(main)
    finally:
        proxy.close()


def test_higher_priority_levels_start_first(broker_url: str, queue_name: str) -> None:
    """With 500 low and 50 critical jobs waiting, every critical job starts before the
    100th low one (200 and 20 on SQS: moto's server does some tens of requests a second)."""
    lows, criticals = (200, 20) if broker_url.startswith("sqs://") else (500, 50)

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            low = await queue.enqueue_many(
                JobSpec("contract.add", [i, 0], priority="low") for i in range(lows)
            )
            critical = await queue.enqueue_many(
                JobSpec("contract.add", [i, 0], priority="critical") for i in range(criticals)
            )
            async with running(make_worker(get_worker_type("async"), queue, concurrency=10)):
                for job in critical + low:
                    await job.wait(timeout=60)
            starts = {}
            for kind, jobs in (("low", low), ("critical", critical)):
                for job in jobs:
                    record = await queue.get_job(job.id)
                    assert record.started_at is not None
                    starts[job.id] = (record.started_at, kind)
            order = [kind for _, kind in sorted(starts.values())]
            hundredth_low = [i for i, kind in enumerate(order) if kind == "low"][99]
            last_critical = max(i for i, kind in enumerate(order) if kind == "critical")
            assert last_critical < hundredth_low, (last_critical, hundredth_low)

    run(main)


async def _fail_until_max_failures(queue: Queue, jobs: int, max_failures: int) -> list[JobStatus]:
    """Enqueue ``jobs`` failing jobs and run a sync worker with ``max_failures`` (no
    prefetch) until it stops itself with exit code 3; returns the jobs' statuses."""
    failing = [await queue.enqueue("contract.fail", [f"f{i}"]) for i in range(jobs)]
    worker = make_worker(get_worker_type("sync"), queue, max_failures=max_failures, prefetch=False)
    await worker.start()
    await asyncio.wait_for(worker.wait_stopped(), timeout=20)
    assert worker.exit_code == 3
    return [(await queue.get_job(j.id)).status for j in failing]


def test_max_failures_stops_the_worker_with_exit_code_3(queue_name: str, uno_home: Path) -> None:
    url, cleanup = make_broker_url("embedded")

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            bad = await queue.enqueue("no_such_task")  # dead letters do not count
            statuses = await _fail_until_max_failures(queue, jobs=6, max_failures=3)
            assert statuses.count(JobStatus.FAILED) == 3
            assert statuses.count(JobStatus.QUEUED) == 3, "the rest wait for another worker"
            assert (await queue.get_job(bad.id)).status == JobStatus.DEAD

    try:
        run(main)
    finally:
        cleanup()


@pytest.fixture
def late_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """``BaseWorker.shutdown`` waits 0.5 s before it starts, as on a loaded machine."""
    real_shutdown = BaseWorker.shutdown

    async def late(self: BaseWorker, wait: bool = True) -> None:
        await asyncio.sleep(0.5)
        await real_shutdown(self, wait)

    monkeypatch.setattr(BaseWorker, "shutdown", late)


@pytest.mark.usefixtures("late_shutdown")
def test_max_failures_starts_no_job_after_the_decision(queue_name: str, uno_home: Path) -> None:
    """The shutdown that max_failures asks for runs as a task of its own. A delivery that
    reaches the loop before that task runs (here the task waits 0.5 s, as on a loaded
    machine) goes back to the broker instead of starting one job more."""
    url, cleanup = make_broker_url("embedded")

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            statuses = await _fail_until_max_failures(queue, jobs=5, max_failures=2)
            assert statuses.count(JobStatus.FAILED) == 2
            assert statuses.count(JobStatus.QUEUED) == 3
            assert await queue.size() == 3

    try:
        run(main)
    finally:
        cleanup()


@pytest.mark.usefixtures("late_shutdown")
def test_sigterm_starts_no_job_before_the_shutdown_runs(
    queue_name: str, uno_home: Path, tmp_path: Path
) -> None:
    """SIGTERM's handler can only spawn the graceful shutdown. A job that finishes before
    that task runs (here it waits 0.5 s, as on a loaded machine) lets the next delivery
    reach the loop: it goes back to the broker instead of starting."""
    url, cleanup = make_broker_url("embedded")

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            release = tmp_path / "release"
            slow = await queue.enqueue("contract.hold_until", [str(tmp_path), "slow", str(release)])
            for i in range(3):
                await queue.enqueue("contract.mark", [str(tmp_path), f"q{i}"])
            worker = make_worker(get_worker_type("sync"), queue, prefetch=False)
            running_worker = asyncio.ensure_future(worker.run())
            await async_wait_until(lambda: list(tmp_path.glob("slow.*")), timeout=15)
            os.kill(os.getpid(), signal.SIGTERM)
            await async_wait_until(lambda: worker._signals == 1, timeout=5)
            release.touch()
            assert await asyncio.wait_for(running_worker, timeout=20) == 0
            assert (await queue.get_job(slow.id)).status == JobStatus.SUCCEEDED
            assert not list(tmp_path.glob("q*")), "no job may start once SIGTERM arrived"
            assert await queue.size() == 3

    try:
        run(main)
    finally:
        cleanup()


def test_time_limits_stop_the_job(
    broker_url: str, worker_type: type[BaseWorker], queue_name: str, tmp_path: Path
) -> None:
    """Threads are interrupted between bytecodes; coroutines are cancelled. The slot
    frees, and the late result is never recorded."""

    async def main() -> None:
        async with opened(queue_name, broker_url) as queue:
            async with running(make_worker(worker_type, queue, concurrency=1)):
                spinning = await queue.enqueue("contract.spin", [str(tmp_path), "s"])
                sleeping = await queue.enqueue("contract.async_sleep", [30])
                after = await queue.enqueue("contract.add", [1, 2])
                for job in (spinning, sleeping):
                    with pytest.raises(JobFailedError, match=r"time limit of 0\.5 s"):
                        await job.wait(timeout=20)
                    record = await queue.get_job(job.id)
                    assert record.error_type == "JobTimeLimitExceeded"
                    assert record.dead_reason == "timeout"
                assert await after.wait(timeout=20) == 3, "the slot was freed"
                assert not (tmp_path / "s.finished").exists(), "the thread was interrupted"

    run(main)


def test_rabbitmq_consumer_timeout_warning(
    uno_home: Path, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = make_broker_url("amqp")

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            long_jobs = make_worker(get_worker_type("async"), queue, max_job_duration=3600)
            async with running(long_jobs):
                pass
            assert "max_job_duration=3600 s exceeds RabbitMQ's consumer_timeout of 1800 s" in (
                caplog.text
            )
            caplog.clear()
            raised = get_worker_type("async")(
                queue_name=queue.name,
                broker_url=f"{url}?consumer_timeout=7200",
                max_job_duration=3600,
            )
            async with running(raised):
                pass
            assert "consumer_timeout" not in caplog.text

    run(main)
