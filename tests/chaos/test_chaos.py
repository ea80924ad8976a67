"""Chaos: workers killed, brokers gone, connections dropped; no job may be lost.

Every case runs on each worker type (sync, thread, process, async), each worker a real
``uno-jobs worker`` process. The ledger (``harness``) compares the ids ``enqueue``
returned with the starts the tasks recorded:

- lost: ``enqueue`` returned, and the job neither succeeded nor was dead-lettered;
- duplicated: started more than once.

Brokers: the embedded one (a SQLite file, so it has no server to lose: it gets the
worker kills only), Redis (a ``redis-server`` of the test's own with ``appendfsync
always``, also the job store, as a Redis deployment's default) and RabbitMQ (the shared
server; the job store is the SQLite store under ``UNO_JOBS_HOME``). Outages and dropped
connections on RabbitMQ go through a TCP proxy the test owns; the real
``rabbitmqctl stop_app`` outage runs only with ``UNO_JOBS_CHAOS_RABBITMQ_APP=1`` (it stops
the server for everyone on it). What each case proves is in docs/chaos.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import AMQP_URL, wait_until
from harness import (
    CONCURRENCY,
    JOBS,
    RUN_SECONDS,
    Chaos,
    RedisServer,
    Verdict,
    chaos_case,
    window,
)
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.chaos

WORKER_TYPES = list(CONCURRENCY)
KILLS = 3
OUTAGE_SECONDS = float(os.environ.get("UNO_JOBS_CHAOS_OUTAGE_SECONDS", "3"))
#: A job enqueued during an outage must raise within this, or succeed after it.
ENQUEUE_RAISES_WITHIN = 5.0
#: After the broker is back, workers take jobs again within this.
CONSUMING_AGAIN_WITHIN = 10.0


def _report(name: str, verdict: Verdict, started: float) -> None:
    print(
        f"chaos {name}: enqueued {verdict.enqueued}, lost {len(verdict.lost)}, "
        f"extra starts {verdict.extra_starts}, dead {verdict.dead}, "
        f"{time.monotonic() - started:.1f} s"
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def _broker_url(kind: str, tmp_path: Path, visibility_timeout: float) -> Iterator[str]:
    """The workers' broker URL of ``kind``: Redis is a redis-server of the test's own."""
    if kind == "embedded":
        yield f"embedded://?visibility_timeout={visibility_timeout:g}"
    elif kind == "redis":
        server = RedisServer(tmp_path / "redis")
        try:
            yield f"{server.url}?visibility_timeout={visibility_timeout:g}"
        finally:
            server.stop()
    else:
        yield AMQP_URL


def _through(proxy: TcpProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{proxy.port}" if auth else f"127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- SIGKILL -----------------------------------------------------------------------------


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
@pytest.mark.parametrize("kind", ["embedded", "redis", "amqp"])
def test_a_worker_sigkilled_three_times_loses_no_job(
    kind: str, worker_type: str, queue_name: str, uno_home: Path, tmp_path: Path
) -> None:
    """Killed at a quarter, half and three quarters of the run, a new worker each time:
    no job lost, and each kill re-runs at most the jobs the killed worker held."""
    t0 = time.monotonic()
    with _broker_url(kind, tmp_path, visibility_timeout=3.0) as url:
        with chaos_case(queue_name, url, worker_type, tmp_path) as case:
            worker = case.worker()
            worker.wait_consuming()
            case.enqueue(JOBS)
            for kill in range(1, KILLS + 1):
                case.wait_started(kill * JOBS // (KILLS + 1))
                worker.sigkill()
                worker = case.worker()
            verdict = case.verdict()
            _report(f"sigkill {kind}/{worker_type}", verdict, t0)
            assert not verdict.lost, verdict.explain()
            assert not verdict.never_started, verdict.explain()
            assert verdict.extra_starts <= KILLS * window(worker_type), verdict.explain()


# -- SIGTERM -----------------------------------------------------------------------------


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
@pytest.mark.parametrize("kind", ["embedded", "redis", "amqp"])
def test_sigterm_finishes_running_jobs_and_hands_back_the_prefetched(
    kind: str, worker_type: str, queue_name: str, uno_home: Path, tmp_path: Path
) -> None:
    """A graceful stop: the jobs it started succeed on it, the ones it prefetched are on
    the broker again at once (a 60 s visibility timeout would hide a late hand-back), and
    a second worker runs the rest: nothing lost, nothing run twice."""
    t0 = time.monotonic()
    jobs = 3 * window(worker_type)
    with _broker_url(kind, tmp_path, visibility_timeout=60.0) as url:
        with chaos_case(queue_name, url, worker_type, tmp_path, job_ms=150.0) as case:
            first = case.worker()
            first.wait_consuming()
            case.enqueue(jobs)
            # Its window is full: it runs jobs and holds prefetched ones.
            case.wait_started(2 * CONCURRENCY[worker_type] + 1)
            first.sigterm()
            assert first.proc.wait(timeout=40) == 0, first.log()
            by_first = {job_id for job_id, label in case.ledger.lines() if label == first.label}
            not_done = [
                job_id
                for job_id in by_first
                if case.queue.get_job_sync(job_id).status.value != "succeeded"
            ]
            assert not not_done, f"started but not finished: {not_done}\n{first.log()}"
            waiting = jobs - len(by_first)
            wait_until(lambda: case.queue.size_sync() == waiting, timeout=5.0)
            case.worker()
            verdict = case.verdict()
            _report(f"sigterm {kind}/{worker_type}", verdict, t0)
            assert not verdict.lost, verdict.explain()
            assert not verdict.duplicated, verdict.explain()
            assert not verdict.never_started, verdict.explain()


# -- broker outage -----------------------------------------------------------------------


class _OutageEnqueue:
    """One enqueue started while the broker is down, in a thread, timed."""

    def __init__(self, case: Chaos) -> None:
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(case,), daemon=True)
        self._thread.start()

    def _run(self, case: Chaos) -> None:
        try:
            case.enqueue(1)
        except BaseException as exc:
            self.error = exc
        self.ended_at = time.monotonic()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _outage(
    case: Chaos, down: Callable[[], None], up: Callable[[], None]
) -> tuple[_OutageEnqueue, float]:
    """Take the broker down a third into the run, enqueue meanwhile, bring it back.

    Returns the outage's enqueue and when the broker was back.
    """
    # Enqueued first: a worker that keeps up with the producer would leave no backlog.
    case.enqueue(JOBS)
    case.worker().wait_consuming()
    case.wait_started(JOBS // 3)
    down_at = time.monotonic()
    down()
    attempt = _OutageEnqueue(case)
    ended = attempt.join(ENQUEUE_RAISES_WITHIN)
    if ended:
        assert attempt.error is not None, "an enqueue succeeded while the broker was down"
        assert attempt.ended_at is not None
        assert attempt.ended_at - attempt.started_at <= ENQUEUE_RAISES_WITHIN
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
    before = case.ledger.count()
    up()
    up_at = time.monotonic()
    # Jobs prefetched before the outage may have started meanwhile; more than a window of
    # new starts means the workers fetch again. Enough jobs for that are enqueued now:
    # at small sizes a worker may have held every job of the run before the outage.
    case.enqueue(window(case.worker_type) + 1)
    case.wait_started(before + window(case.worker_type) + 1, timeout=CONSUMING_AGAIN_WITHIN)
    print(f"chaos: consuming again {time.monotonic() - up_at:.1f} s after the broker was back")
    return attempt, up_at


def _check_outage(case: Chaos, attempt: _OutageEnqueue, up_at: float, name: str, t0: float) -> None:
    # Never hangs: an enqueue still waiting when the broker came back ends soon after.
    assert attempt.join(max(0.0, up_at + 20.0 - time.monotonic())), "enqueue hangs"
    assert attempt.ended_at is not None
    took = attempt.ended_at - attempt.started_at
    outcome = f"raised {type(attempt.error).__name__}" if attempt.error else "succeeded"
    print(f"chaos {name}: the enqueue during the outage {outcome} after {took:.2f} s")
    verdict = case.verdict()
    _report(name, verdict, t0)
    assert not verdict.lost, verdict.explain()
    assert not verdict.never_started, verdict.explain()


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_a_redis_outage_loses_no_job(
    worker_type: str, queue_name: str, uno_home: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    """The redis-server (broker and job store) SIGKILLed a third into the run and started
    again on the same port from its append-only file."""
    t0 = time.monotonic()
    url = f"{redis_server.url}?visibility_timeout=3"
    with chaos_case(queue_name, url, worker_type, tmp_path) as case:
        attempt, up_at = _outage(case, redis_server.kill, redis_server.start)
        _check_outage(case, attempt, up_at, f"redis outage/{worker_type}", t0)


@contextmanager
def _proxy_to(url: str) -> Iterator[tuple[TcpProxy, str]]:
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        yield proxy, _through(proxy, url)
    finally:
        proxy.close()


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_a_rabbitmq_outage_through_the_proxy_loses_no_job(
    worker_type: str, queue_name: str, uno_home: Path, tmp_path: Path
) -> None:
    """Worker and producer reach RabbitMQ through a proxy that resets every connection
    and refuses new ones for the outage (the shared server itself stays up)."""
    t0 = time.monotonic()
    with _proxy_to(AMQP_URL) as (proxy, url):
        with chaos_case(queue_name, url, worker_type, tmp_path) as case:
            attempt, up_at = _outage(case, proxy.down, proxy.up)
            _check_outage(case, attempt, up_at, f"amqp outage/{worker_type}", t0)


def test_a_worker_at_its_longest_backoff_consumes_within_10_s_of_the_return(
    queue_name: str, uno_home: Path, tmp_path: Path
) -> None:
    """The worst moment for a broker to come back: just after a failed reconnect, with the
    backoff at its cap. The worker must still be consuming within 10 s (the consumer's
    reconnect backoff is what decides this, the same on every broker and worker type)."""
    with _proxy_to(AMQP_URL) as (proxy, url):
        with chaos_case(queue_name, url, "thread", tmp_path) as case:
            case.enqueue(JOBS)
            worker = case.worker()
            worker.wait_consuming()
            case.wait_started(JOBS // 3)
            proxy.down()
            # Backoffs double from 0.5 s: by the fifth failed try they are at the cap.
            wait_until(lambda: worker.log().count("reconnecting failed") >= 5, timeout=90)
            before = case.ledger.count()
            proxy.up()
            up_at = time.monotonic()
            case.wait_started(before + window("thread") + 1, timeout=CONSUMING_AGAIN_WITHIN)
            print(f"chaos: consuming again {time.monotonic() - up_at:.1f} s after the return")
            verdict = case.verdict()
            assert not verdict.lost, verdict.explain()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(
    os.environ.get("UNO_JOBS_CHAOS_RABBITMQ_APP") != "1",
    reason="stops the RabbitMQ application for everyone on it: "
    "set UNO_JOBS_CHAOS_RABBITMQ_APP=1 on a server of your own",
)
@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_rabbitmq_stop_app_and_start_app_loses_no_job(
    worker_type: str, queue_name: str, uno_home: Path, tmp_path: Path
) -> None:
    """The real outage: ``rabbitmqctl stop_app`` a third into the run, ``start_app``."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    t0 = time.monotonic()

    def up() -> None:
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup")

    try:
        with chaos_case(queue_name, AMQP_URL, worker_type, tmp_path) as case:
            attempt, up_at = _outage(case, lambda: _rabbitmqctl("stop_app"), up)
            _check_outage(case, attempt, up_at, f"amqp stop_app/{worker_type}", t0)
    finally:
        _rabbitmqctl("start_app")  # whatever failed, the server is left running


# -- dropped connections -----------------------------------------------------------------


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_connections_dropped_again_and_again_lose_no_job(
    kind: str, worker_type: str, queue_name: str, uno_home: Path, tmp_path: Path
) -> None:
    """The proxy resets every connection of the workers and the producer three times
    while a producer thread enqueues: nothing hangs and no job is lost."""
    t0 = time.monotonic()
    with _broker_url(kind, tmp_path, visibility_timeout=3.0) as target:
        with _proxy_to(target) as (proxy, url):
            with chaos_case(queue_name, url, worker_type, tmp_path) as case:
                worker = case.worker()
                worker.wait_consuming()
                case.enqueue(JOBS // 2)
                producer = _Producer(case, JOBS - JOBS // 2)
                for cut in range(1, KILLS + 1):
                    case.wait_started(cut * JOBS // (KILLS + 1))
                    proxy.cut()
                assert producer.join(RUN_SECONDS), "the producer hangs"
                verdict = case.verdict()
                _report(f"dropped {kind}/{worker_type}", verdict, t0)
                assert not verdict.lost, verdict.explain()
                assert not verdict.never_started, verdict.explain()
                # A cut hands back at most what the worker held, as a kill does.
                assert verdict.extra_starts <= KILLS * window(worker_type), verdict.explain()


class _Producer:
    """Enqueues ``count`` jobs in small batches, retrying a batch the broker refused."""

    def __init__(self, case: Chaos, count: int) -> None:
        self.failures = 0
        self._thread = threading.Thread(target=self._run, args=(case, count), daemon=True)
        self._thread.start()

    def _run(self, case: Chaos, count: int) -> None:
        done = 0
        while done < count:
            before = len(case.ids)
            try:
                case.enqueue(min(10, count - done), batch=10)
            except Exception:
                self.failures += 1
                time.sleep(0.1)
            done += len(case.ids) - before

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()
