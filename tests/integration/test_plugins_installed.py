"""Plugins installed with pip and found through their entry points, with no change to uno_jobs.

The example third-party plugin (examples/third_party_plugin) is pip-installed into a
folder of its own and put on PYTHONPATH of subprocesses, so the test environment itself is
not changed. The first-party jsonlog plugin (plugins/uno-jobs-jsonlog) is installed by the
README's set-up command.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

from uno_jobs import JobStatus, Queue

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REPO = HERE.parent.parent
EXAMPLE = REPO / "examples" / "third_party_plugin"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("example_plugin_site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return site


@pytest.fixture
def env(example_site: Path, uno_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(example_site), str(HERE)]),
        "UNO_JOBS_HOME": str(uno_home),
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uno_jobs.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_plugins_lists_the_installed_example(env: dict[str, str]) -> None:
    listing = cli(env, "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    infos = {info["name"]: info for info in json.loads(listing.stdout)}
    example = infos["example"]
    assert (example["distribution"], example["version"]) == ("uno-jobs-example-plugin", "1.2.0")
    assert example["contributes"] == {
        "worker types": ["example-async"],
        "middleware": ["stamp"],
        "retry policies": ["quick"],
    }
    text = cli(env, "plugins").stdout
    assert "example  (plugin; uno-jobs-example-plugin 1.2.0)" in text


def test_autoload_off_drops_the_example_and_keeps_the_builtins(env: dict[str, str]) -> None:
    off = {**env, "UNO_JOBS_DISABLE_PLUGIN_AUTOLOAD": "1"}
    names = {info["name"] for info in json.loads(cli(off, "plugins", "--json").stdout)}
    assert "example" not in names and "uno_jobs.builtins" in names
    worker = cli(off, "worker", "--type", "example-async", "--queue", "x")
    assert worker.returncode == 2 and "unknown worker type 'example-async'" in worker.stderr
    explicit = {**off, "UNO_JOBS_PLUGINS": "example"}
    names = {info["name"] for info in json.loads(cli(explicit, "plugins", "--json").stdout)}
    assert "example" in names
    blocked = {**env, "UNO_JOBS_BLOCK_PLUGINS": "example"}
    names = {info["name"] for info in json.loads(cli(blocked, "plugins", "--json").stdout)}
    assert "example" not in names


@pytest.fixture
def queue_and_worker_log(
    env: dict[str, str], queue_name: str, tmp_path: Path
) -> Iterator[tuple[Queue, Path]]:
    queue = Queue(queue_name)
    yield queue, tmp_path / "worker.log"
    asyncio.run(queue.delete())
    queue.close()


def test_a_worker_uses_the_plugins_type_middleware_and_retry_policy(
    env: dict[str, str], queue_and_worker_log: tuple[Queue, Path], tmp_path: Path
) -> None:
    queue, log_path = queue_and_worker_log
    markers = tmp_path / "markers"
    markers.mkdir()
    events_path = tmp_path / "events.jsonl"
    job = queue.enqueue_sync("contract.flaky_hourly", [str(markers), "p", 2])
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uno_jobs.cli",
                "worker",
                "--app",
                "contract_tasks",
                "--queue",
                queue.name,
                "--type",
                "example-async",
                "--middleware",
                "stamp",
                "--middleware",
                "jsonlog",
                "--retry-policy",
                "quick",
                "--jsonlog-file",
                str(events_path),
            ],
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        # The task's retry_delay is an hour: only the plugin's policy retries it at once.
        wait_until(lambda: queue.get_job_sync(job.id).finished, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)
    record = queue.get_job_sync(job.id)
    assert record.status == JobStatus.SUCCEEDED, log_path.read_text()
    assert record.attempts == 3
    assert record.result == {"value": 3, "stamped_by": "example"}
    assert record.worker_id and record.worker_id.startswith("example-")
    # --jsonlog-file is an option the first-party jsonlog plugin adds to `uno-jobs worker`.
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert [e["event"] for e in events if e["job_id"] == job.id] == [
        "job.started",
        "job.failed",
        "job.started",
        "job.failed",
        "job.started",
        "job.succeeded",
    ]
    assert worker.returncode == 0


def test_a_worker_with_an_unknown_middleware_name_fails_naming_it(env: dict[str, str]) -> None:
    result = cli(env, "worker", "--queue", f"q-{uuid.uuid4().hex[:6]}", "--middleware", "nosuch")
    assert result.returncode == 2
    assert "unknown middleware 'nosuch'" in result.stderr and "stamp" in result.stderr


def test_the_pytest_plugin_example_passes(uno_home: Path) -> None:
    """The user-facing pytest fixtures (entry point pytest11) work with no broker."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=REPO / "examples" / "testing",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "UNO_JOBS_HOME": str(uno_home)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
