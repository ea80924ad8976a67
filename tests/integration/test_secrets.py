"""A broker password never shows: not in logs, errors, reprs, CLI output, metrics or health.

A RabbitMQ user (``rabbitmqctl add_user``) and a Redis ACL user, each with a password of
its own that URL-encoding changes, are created for the test and deleted after it. Then,
with URLs that carry that password: a worker in this process and one ``uno-jobs worker``
process (DEBUG logs, probes, the Prometheus exporter) run a job that succeeds and one
that fails for good; a producer and a worker meet a broker that is down; the CLI's
``enqueue``, ``job``, ``dead list``, ``plugins`` and (Redis) ``cluster status`` run; the
probes and ``/metrics`` are scraped. Everything that was logged, printed, raised or
returned is searched for the password's unique part, which both its raw and its
URL-encoded forms contain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import traceback
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import pytest
import redis
from conftest import REDIS_DB, REDIS_HOST, delete_redis_prefix, wait_until

from uno_jobs import AsyncWorker, JobFailedError, Queue
from uno_jobs.coordination import WorkerCoordinator

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REPO = HERE.parent.parent
CLI = [sys.executable, "-m", "uno_jobs.cli"]


class Secret:
    """A password with a unique token; ``/``, ``+``, ``&``, ``#`` change when URL-encoded."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.password = f"pw/{self.token}+&#!"
        self.user = f"uno-secret-{uuid.uuid4().hex[:8]}"

    @property
    def forms(self) -> list[str]:
        return [self.token, self.password, quote(self.password, safe=""), quote_plus(self.password)]

    def in_url(self, scheme: str, host: str, port: int, path: str) -> str:
        return f"{scheme}://{self.user}:{quote(self.password, safe='')}@{host}:{port}{path}"


class Evidence:
    """Everything the test saw, by where it came from."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: object) -> None:
        self.texts.append((where, str(text)))

    def error(self, where: str, exc: BaseException) -> None:
        self.add(where, "".join(traceback.format_exception(exc)) + repr(exc))

    def leaks(self, secret: Secret) -> list[str]:
        return [
            f"{where}: ...{text[max(0, text.find(form) - 200) : text.find(form) + 40]}..."
            for where, text in self.texts
            for form in secret.forms
            if form in text
        ]


class _Collect(logging.Handler):
    def __init__(self, evidence: Evidence) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self._evidence = evidence

    def emit(self, record: logging.LogRecord) -> None:
        self._evidence.add(f"log {record.name}", self.format(record) + repr(record.__dict__))


@pytest.fixture
def evidence() -> Iterator[Evidence]:
    found = Evidence()
    handler = _Collect(found)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield found
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def rabbitmq_user() -> Iterator[Secret]:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    secret = Secret()

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)

    ctl("add_user", secret.user, secret.password)
    try:
        ctl("set_permissions", "-p", "/", secret.user, ".*", ".*", ".*")
        yield secret
    finally:
        ctl("delete_user", secret.user)


@pytest.fixture
def redis_user() -> Iterator[Secret]:
    secret = Secret()
    host, port = REDIS_HOST.split(":")
    admin = redis.Redis(host=host, port=int(port))
    admin.acl_setuser(
        secret.user,
        enabled=True,
        passwords=[f"+{secret.password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    try:
        yield secret
    finally:
        admin.acl_deluser(secret.user)
        admin.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _down(url: str) -> str:
    """``url`` pointed at a port where nothing listens."""
    parts = urlsplit(url)
    return url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{_free_port()}", 1)


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode())
    except urllib.error.HTTPError as exc:  # /readyz may answer 503; its body is evidence
        return f"{exc.code} {exc.read().decode()}"


def _cli(evidence: Evidence, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*CLI, "--log-level", "DEBUG", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    evidence.add(f"uno-jobs {' '.join(args)} (exit {done.returncode})", done.stdout + done.stderr)
    return done


async def _in_process(
    evidence: Evidence, queue_name: str, url: str, store: str | None, folder: str
) -> None:
    """A worker and a producer in this process: jobs, failures, health, reprs, outage."""
    queue = Queue(queue_name, broker_url=url, store_url=store)
    worker = AsyncWorker(queue_name=queue_name, broker_url=url, store_url=store)
    await worker.start()
    try:
        ok = await queue.enqueue("contract.add", [1, 2])
        assert await ok.wait(timeout=30) == 3
        bad = await queue.enqueue("failure.always", [folder, "secret"])
        with pytest.raises(JobFailedError) as failed:
            await bad.wait(timeout=30)
        evidence.error("JobFailedError", failed.value)
        evidence.add("job record", (await queue.get_job(bad.id)).to_dict())
        evidence.add("dead letters", await queue.dead_letters())
        evidence.add("get_health", await worker.get_health())
        evidence.add("get_metrics", await worker.get_metrics())
        evidence.add("health_reasons", worker.health_reasons())
        evidence.add("reprs", [queue, worker, queue.store, ok, worker._broker, worker._store])
        evidence.add("broker spec", repr(queue._broker.spec))
    finally:
        await worker.shutdown()
        await queue.delete()
        queue.close()
    # The broker (and a Redis store) down: the producer's and the worker's errors.
    down_store = _down(store) if store else None
    down = Queue(queue_name, broker_url=_down(url), store_url=down_store)
    with pytest.raises(Exception) as refused:  # any error: its text is the point
        await asyncio.wait_for(down.enqueue("contract.add", [1, 2]), 30)
    evidence.error("enqueue, broker down", refused.value)
    evidence.add("repr, broker down", down)
    down.close()
    stuck = AsyncWorker(queue_name=queue_name, broker_url=_down(url), store_url=down_store)
    with pytest.raises(Exception) as unavailable:
        await asyncio.wait_for(stuck.start(), 30)
    evidence.error("worker start, broker down", unavailable.value)


def _cli_run(
    evidence: Evidence, queue_name: str, env: dict[str, str], logs: Path, kind: str
) -> None:
    """A ``uno-jobs worker`` process with probes and Prometheus, and the CLI around it."""
    probe, metrics = _free_port(), _free_port()
    log = logs / "cli-worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [
                *CLI,
                "--log-level",
                "DEBUG",
                "worker",
                "--app",
                "contract_tasks",
                "--app",
                "failure_tasks",
                "-Q",
                queue_name,
                "--probe-port",
                str(probe),
                "--metrics-exporter",
                "prometheus",
                "--prometheus-port",
                str(metrics),
            ],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: " consuming " in log.read_text(errors="replace"), timeout=60)
        done = _cli(evidence, env, "enqueue", "contract.add", "-Q", queue_name,
                    "--args", "[2, 3]", "--wait", "30")  # fmt: skip
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.split()[0]
        args = f'["{logs}", "cli"]'
        done = _cli(evidence, env, "enqueue", "failure.always", "-Q", queue_name,
                    "--args", args, "--wait", "30")  # fmt: skip
        assert done.returncode == 1, done.stderr
        _cli(evidence, env, "job", job_id, "-Q", queue_name)
        _cli(evidence, env, "dead", "list", "-Q", queue_name)
        _cli(evidence, env, "dead", "list", "--json", "-Q", queue_name)
        _cli(evidence, env, "plugins")
        _cli(evidence, env, "plugins", "--json")
        if kind == "redis":
            _cli(evidence, env, "cluster", "status", "--cluster", f"t-{uuid.uuid4().hex[:8]}")
        for path in ("/livez", "/readyz"):
            evidence.add(f"probe {path}", _get(f"http://127.0.0.1:{probe}{path}"))
        evidence.add("prometheus /metrics", _get(f"http://127.0.0.1:{metrics}/metrics"))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=40)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        evidence.add("uno-jobs worker log", log.read_text(errors="replace"))
    down = {**env, "UNO_JOBS_BROKER_URL": _down(env["UNO_JOBS_BROKER_URL"])}
    if "UNO_JOBS_STORE_URL" in down:
        down["UNO_JOBS_STORE_URL"] = _down(down["UNO_JOBS_STORE_URL"])
    done = _cli(evidence, down, "enqueue", "contract.add", "-Q", queue_name, "--args", "[1, 1]")
    assert done.returncode != 0


@pytest.mark.parametrize("kind", ["amqp", "redis"])
def test_the_broker_password_shows_nowhere(
    kind: str, request: pytest.FixtureRequest, evidence: Evidence, queue_name: str,
    uno_home: Path, tmp_path: Path,
) -> None:  # fmt: skip
    secret: Secret = request.getfixturevalue(f"{'rabbitmq' if kind == 'amqp' else 'redis'}_user")
    host, port = REDIS_HOST.split(":")
    prefixes = [f"uno-test-{uuid.uuid4().hex[:10]}:" for _ in range(2)]
    if kind == "amqp":
        url = secret.in_url("amqp", "127.0.0.1", 5672, "//")
        store = None  # the SQLite store under UNO_JOBS_HOME
    else:
        base = secret.in_url("redis", host, int(port), f"/{REDIS_DB}")
        url = f"{base}?key_prefix={prefixes[0]}&visibility_timeout=5"
        store = f"{base}?key_prefix={prefixes[1]}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p),
        "UNO_JOBS_BROKER_URL": url,
        "UNO_JOBS_HOME": str(uno_home),
    }
    if store:
        env["UNO_JOBS_STORE_URL"] = store
    try:
        import contract_tasks  # noqa: F401 - registers contract.add here
        import failure_tasks  # noqa: F401

        asyncio.run(_in_process(evidence, queue_name, url, store, str(tmp_path)))
        if kind == "redis":
            coordinator = WorkerCoordinator(url, f"t-{uuid.uuid4().hex[:8]}")
            evidence.add("coordinator repr", coordinator)
            asyncio.run(coordinator.stop())
        _cli_run(evidence, queue_name, env, tmp_path, kind)
    finally:
        if kind == "redis":
            for prefix in prefixes:
                delete_redis_prefix(prefix)
        else:
            leftover = Queue(queue_name, broker_url=url)
            asyncio.run(leftover.delete())
            leftover.close()
    assert len(evidence.texts) > 20, "the test saw too little to prove anything"
    assert any(secret.user in text for _, text in evidence.texts), "the URLs were not used"
    leaks = evidence.leaks(secret)
    assert not leaks, "the password leaked:\n" + "\n".join(leaks)
