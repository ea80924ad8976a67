"""Every example of WORKERS.md, as written, runs on every broker (DESIGN.md §1).

Each file under ``examples/spec/`` holds one spec block verbatim inside ``async def
main()``, plus what the block leaves out. Here each runs as a subprocess, from that folder,
against the embedded broker, Redis and RabbitMQ, and must exit 0 and print its key lines.
The examples name no broker: it comes from ``UNO_JOBS_BROKER_URL``, as a user's would.

The examples use the queue ``default``, as the spec does, so each run gets a broker
namespace of its own: a fresh ``UNO_JOBS_HOME`` (embedded broker, SQLite store), a Redis
key prefix (deleted afterwards), a RabbitMQ vhost for the test session (the ``default``
queues are deleted after each run; without ``rabbitmqctl``, the ``/`` vhost's are deleted
before and after).

A second test checks that the block in each example is still the spec's, line for line.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import AMQP_URL, REDIS_DB, REDIS_HOST, delete_redis_prefix

from uno_jobs import Queue

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "examples" / "spec"
RUN_TIMEOUT = 60.0
_ENV_KEYS = (
    "UNO_JOBS_HOME",
    "UNO_JOBS_BROKER_URL",
    "UNO_JOBS_STORE_URL",
    "UNO_JOBS_ALLOWED_MODULES",
    "UNO_JOBS_COORDINATOR_URL",
    "UNO_JOBS_CLUSTER_KEY_PREFIX",
)


def _check_middleware(stdout: str) -> None:
    """Each job's hooks printed, with the job's own id."""
    ok = re.search(r"^ok job: (\S+)$", stdout, re.M)
    bad = re.search(r"^failing job: (\S+)$", stdout, re.M)
    assert ok and bad, stdout
    lines = stdout.splitlines()
    assert f"Starting job {ok[1]}" in lines, stdout
    assert f"Completed job {ok[1]}" in lines, stdout
    assert f"Starting job {bad[1]}" in lines, stdout
    assert f"Error in job {bad[1]}: kaboom" in lines, stdout
    assert f"Completed job {bad[1]}" not in lines, stdout
    assert not any(line.startswith(f"Error in job {ok[1]}") for line in lines), stdout


@dataclass(frozen=True)
class Example:
    """One example file, the spec section it runs, and what its output must show."""

    file: str
    section: str
    expect: tuple[str, ...]
    check: Callable[[str], None] | None = None
    # Lifecycle: the block's lines stay in order, with marked added lines between them.
    interleaved: bool = False


EXAMPLES = [
    Example(
        "sync_worker.py",
        "Synchronous Worker",
        (r"^results: \[0, 10, 20, 30, 40\]$", r"overlapping runs: 0$"),
    ),
    Example(
        "thread_pool_worker.py",
        "Thread Pool Worker",
        (r"^10 jobs completed, 5 at a time, in \d+ threads$",),
    ),
    Example(
        "specialized_workers.py",
        "Specialized Workers",
        (
            r"^critical jobs ran on critical-worker$",
            r"^high jobs ran on standard-worker$",
            r"^normal jobs ran on standard-worker$",
            r"^low jobs ran on background-worker$",
        ),
    ),
    Example(
        "graceful_shutdown.py",
        "Graceful Shutdown",
        (
            r"^SIGTERM: the running job finished \(slept 1\.0 s\), then the worker stopped$",
            r"^Worker shutdown complete$",
        ),
    ),
    Example(
        "process_pool_worker.py",
        "Process Pool Worker",
        (r"^8 jobs completed, 4 at a time, in 4 child processes$",),
    ),
    Example(
        "async_worker.py",
        "Async Worker",
        (r"^20 jobs ran concurrently on one event loop", r"'jobs_succeeded': 20,"),
    ),
    Example(
        "worker_configuration.py",
        "Worker Configuration",
        (
            r"^results: \[1, 2, 3, 4, 5\]$",
            r"^INFO my_app\.jobs: job \S+ \(spec\.worker_configuration\.word_count\) "
            r"starting on worker-1$",
            r"^health: \{'status': 'healthy', 'uptime': \d+, 'jobs_processed': 5,",
            r"^metrics: \{'jobs_processed_total': 5, 'jobs_succeeded': 5, 'jobs_failed': 0,",
        ),
    ),
    Example(
        "worker_lifecycle.py",
        "Worker Lifecycle",
        (
            r"^running: ran while running$",
            r"^paused: job queued while the worker is paused$",
            r"^running: ran after resume$",
            r"^stopped: job succeeded: finished during graceful shutdown$",
        ),
        interleaved=True,
    ),
    Example(
        "task_discovery_module_path.py",
        "Module Path",
        (
            r"generate_report\('weekly', 'csv'\) -> 'weekly-report\.csv'$",
            r"^jobs succeeded: 2 of 2$",
        ),
    ),
    Example(
        "task_discovery_registry.py",
        "Task Registry",
        (r"task 'generate_report', succeeded, result None$", r"^jobs succeeded: 2 of 2$"),
    ),
    Example(
        "exception_handling.py",
        "Exception Handling",
        (
            r"^job\.wait\(\) raised JobFailedError: job \S+ failed: ValueError: "
            r"Something went wrong$",
            r"^status: failed, attempts: 1$",
            r"^error: ValueError: Something went wrong$",
        ),
    ),
    Example(
        "retry_logic.py",
        "Retry Logic",
        (
            r"^max_retries=3, retry_delay=60 s$",
            r"^attempt 1 failed: MiddlewareError: .*ConnectionError: the database did not answer$",
            r"^status: scheduled, attempts: 1$",
            r"^attempt 2 due in (59|60) s, at \d\d:\d\d:\d\d UTC$",
        ),
    ),
    Example(
        "monitoring.py",
        "Monitoring and Health Checks",
        (
            r"^health: \{'status': 'healthy', 'uptime': \d+, 'jobs_processed': 10, "
            r"'failure_rate': 0\.1, 'current_jobs': 0, 'last_job_completed': '\S+Z'\}$",
            r"^metrics: \{'jobs_processed_total': 10, 'jobs_succeeded': 9, 'jobs_failed': 1,",
        ),
    ),
    Example(
        "timeout_handling.py",
        "Timeout Handling",
        (
            r"^long_running_task: succeeded, result None$",
            r"^status: failed, attempts: 1$",
            r"^error: JobTimeLimitExceeded: job exceeded its time limit of 1\.5 s$",
            r"^stopped after \d\.\d s: the smaller of timeout=300 and max_job_duration=1\.5$",
        ),
    ),
    Example(
        "middleware.py", "Middleware", (r"^ok job result: 'hello, world'$",), _check_middleware
    ),
    Example(
        "distributed_worker.py",
        "Distributed Worker",
        (
            r"^results: \[0, 2, 4, 6, 8\]$",
            r"^member: distributed-worker-1 DistributedWorker running leader$",
            r"^second worker refused: worker id 'distributed-worker-1' is alive in cluster "
            r"'cluster-1'",
            r"^members after shutdown: 0, leader: None$",
        ),
    ),
    Example(
        "worker_coordination.py",
        "Worker Coordination",
        (
            r"^member: coordinated-worker-1 AsyncWorker running on default$",
            r"^paused by the cluster: job queued$",
            r"^resumed: 'hello, cluster'$",
            r"^cluster shutdown: worker stopped$",
        ),
    ),
    Example(
        "worker_pool.py",
        "Worker Pool",
        (
            r"^pool started with 5 member processes$",
            r"^20 jobs ran in member processes \(\d+ of them\), none in this one$",
            r"^metrics: \{'jobs_processed_total': 20, 'jobs_succeeded': 20, 'jobs_failed': 0,",
            r"'workers': 5\}$",
            r"^after shutdown: 0 members$",
        ),
    ),
    Example(
        "multi_worker.py",
        "Multi-Worker Setup",
        (r"^30 jobs, each run exactly once$", r"^workers that ran jobs: [123]$"),
    ),
]


# -- broker namespaces -----------------------------------------------------------------


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60, text=True)


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + vhost, parts.query, ""))


@dataclass(frozen=True)
class AmqpNamespace:
    url: str
    own_vhost: bool


@pytest.fixture(scope="session")
def amqp_namespace() -> Iterator[AmqpNamespace]:
    """A RabbitMQ vhost for this session, or the default vhost when one cannot be made."""
    vhost = f"uno-spec-{uuid.uuid4().hex[:10]}"
    try:
        if shutil.which("rabbitmqctl") is None:
            raise FileNotFoundError("rabbitmqctl")
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError):
        yield AmqpNamespace(AMQP_URL, own_vhost=False)
        return
    try:
        yield AmqpNamespace(_with_vhost(AMQP_URL, vhost), own_vhost=True)
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def _delete_default_queues(broker_url: str) -> None:
    async def delete() -> None:
        async with Queue("default", broker_url=broker_url) as queue:
            await queue.delete()

    asyncio.run(delete())


@pytest.fixture(params=["embedded", "redis", "amqp"])
def example_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of one example run: its own UNO_JOBS_HOME and broker namespace."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    env["UNO_JOBS_HOME"] = str(tmp_path / "uno_home")
    env["PYTHONUNBUFFERED"] = "1"
    # The cluster examples name the coordinator redis://localhost:6379/0: a key prefix of
    # this run's own keeps their clusters apart from any other.
    cluster_prefix = f"uno-spec-cluster-{uuid.uuid4().hex[:10]}:"
    env["UNO_JOBS_CLUSTER_KEY_PREFIX"] = cluster_prefix
    request.addfinalizer(lambda: _delete_keys(REDIS_SPEC_DB0, cluster_prefix))
    if request.param == "embedded":
        yield env
    elif request.param == "redis":
        prefix = f"uno-spec-{uuid.uuid4().hex[:10]}:"
        env["UNO_JOBS_BROKER_URL"] = f"redis://{REDIS_HOST}/{REDIS_DB}?key_prefix={prefix}"
        try:
            yield env
        finally:
            delete_redis_prefix(prefix)
    else:
        namespace: AmqpNamespace = request.getfixturevalue("amqp_namespace")
        env["UNO_JOBS_BROKER_URL"] = namespace.url
        if not namespace.own_vhost:
            _delete_default_queues(namespace.url)
        try:
            yield env
        finally:
            _delete_default_queues(namespace.url)


REDIS_SPEC_DB0 = "redis://localhost:6379/0"


def _delete_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


# -- the tests ---------------------------------------------------------------------------


def test_every_example_is_listed() -> None:
    files = {path.name for path in EXAMPLES_DIR.glob("*.py")}
    assert files == {example.file for example in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.file.removesuffix(".py") for e in EXAMPLES])
def test_example_runs(example: Example, example_env: dict[str, str]) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, example.file],
            cwd=EXAMPLES_DIR,
            env=example_env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        partial = f"--- stdout\n{_text(exc.stdout)}--- stderr\n{_text(exc.stderr)}"
        pytest.fail(f"{example.file} still running after {RUN_TIMEOUT:g} s\n{partial}")
    output = f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, output
    for pattern in (*example.expect, r"^done$"):
        assert re.search(pattern, proc.stdout, re.M), f"no line matches {pattern!r}\n{output}"
    if example.check is not None:
        example.check(proc.stdout)


# -- the blocks are the spec's ----------------------------------------------------------


def _find_spec() -> Path | None:
    candidates: list[str | Path] = [
        os.environ.get("UNO_JOBS_SPEC", ""),
        REPO / "spec" / "WORKERS.md",
        REPO / "docs" / "WORKERS.md",
        REPO.parent / "shared" / "spec" / "WORKERS.md",
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _spec_blocks(text: str) -> dict[str, list[str]]:
    """The first python block under each heading, by heading text."""
    blocks: dict[str, list[str]] = {}
    heading = ""
    block: list[str] | None = None
    for line in text.splitlines():
        if block is not None:
            if line.strip() == "```":
                blocks.setdefault(heading, block)
                block = None
            else:
                block.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.strip() == "```python":
            block = []
    return blocks


def _example_block(path: Path) -> list[str]:
    """The lines between the example's spec markers, dedented."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# --- spec block"))
    end = next(i for i, line in enumerate(lines) if line.strip() == "# --- end of spec block ---")
    return textwrap.dedent("\n".join(lines[start + 1 : end])).splitlines()


def _without_added(lines: list[str]) -> list[str]:
    """Drop each ``# + added`` comment and the lines after it, up to the next blank line."""
    kept, skipping = [], False
    for line in lines:
        if line.strip().startswith("# + added"):
            skipping = True
        elif not line.strip():
            skipping = False
        if not skipping:
            kept.append(line)
    return kept


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.file.removesuffix(".py") for e in EXAMPLES])
def test_example_holds_the_spec_block_verbatim(example: Example) -> None:
    spec = _find_spec()
    if spec is None:
        pytest.skip("WORKERS.md not found (set UNO_JOBS_SPEC to its path)")
    expected = _spec_blocks(spec.read_text())[example.section]
    found = _example_block(EXAMPLES_DIR / example.file)
    if example.interleaved:
        found = _without_added(found)
    else:
        assert not any(line.strip().startswith("# + added") for line in found)
    nonblank = [line.rstrip() for line in found if line.strip()]
    assert nonblank == [line.rstrip() for line in expected if line.strip()]
