"""Worker options: what each worker type accepts, refuses, and defaults to.

Nothing here connects: a worker opens its broker and store only in ``start()``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from uno_jobs.errors import ConfigurationError
from uno_jobs.middleware import Middleware
from uno_jobs.worker import (
    AsyncWorker,
    AsyncWorkerOptions,
    BaseWorker,
    SyncWorker,
    SyncWorkerOptions,
    ThreadPoolWorker,
    ThreadPoolWorkerOptions,
    WorkerState,
)

WORKER_TYPES: list[type[BaseWorker]] = [SyncWorker, ThreadPoolWorker, AsyncWorker]


class LoggingMiddleware(Middleware):
    """The middleware of WORKERS.md "Middleware", as written there."""

    async def before_execution(self, job: Any, task_func: Any) -> None:
        print(f"Starting job {job['id']}")
        return await super().before_execution(job, task_func)

    async def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
        print(f"Completed job {job['id']}")
        return await super().after_execution(job, task_func, result)

    async def on_error(self, job: Any, task_func: Any, exception: BaseException) -> None:
        print(f"Error in job {job['id']}: {exception}")
        return await super().on_error(job, task_func, exception)


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No broker or store in the environment; the home folder is a fresh tmp folder."""
    home = tmp_path / "home"
    monkeypatch.setenv("UNO_JOBS_HOME", str(home))
    for name in ("UNO_JOBS_BROKER_URL", "UNO_JOBS_STORE_URL", "UNO_JOBS_ALLOWED_MODULES"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_worker_configuration_block_of_the_spec_is_accepted(clean_env: Path) -> None:
    logging_middleware = LoggingMiddleware()
    worker = AsyncWorker(
        # Basic configuration
        queue_name="default",  # Queue to process
        worker_id="worker-1",  # Unique worker identifier
        # Concurrency settings
        max_concurrent=20,  # Maximum concurrent jobs
        batch_size=10,  # Jobs to fetch at once
        # Processing settings
        shutdown_timeout=30,  # Seconds to wait for graceful shutdown
        poll_interval=1.0,  # Seconds between polling when queue is empty
        prefetch=True,  # Whether to prefetch next jobs
        # Reliability settings
        heartbeat_interval=30,  # Seconds between worker heartbeats
        max_job_duration=3600,  # Maximum job runtime in seconds
        # Health check settings
        healthcheck_interval=60,  # Seconds between health checks
        # Middleware
        middleware=[logging_middleware],  # Processing middleware
        # Error handling
        max_failures=100,  # Max consecutive failures before shutdown
        # Monitoring
        metrics_enabled=True,  # Whether to collect metrics
        metrics_interval=10,  # Seconds between metrics collection
    )
    opts = worker.options
    assert isinstance(opts, AsyncWorkerOptions)
    assert worker.queue_name == "default"
    assert worker.worker_id == "worker-1"
    assert worker.concurrency == 20
    assert (opts.batch_size, opts.shutdown_timeout, opts.poll_interval) == (10, 30.0, 1.0)
    assert opts.prefetch is True
    assert (opts.heartbeat_interval, opts.max_job_duration) == (30.0, 3600.0)
    assert opts.healthcheck_interval == 60.0
    assert opts.middleware == [logging_middleware]
    assert opts.max_failures == 100
    assert (opts.metrics_enabled, opts.metrics_interval) == (True, 10.0)
    assert worker.state == WorkerState.INITIALIZED


@pytest.mark.parametrize(
    ("cls", "concurrency"),
    [
        (SyncWorker, {}),
        (ThreadPoolWorker, {"max_threads": 3}),
        (AsyncWorker, {"max_concurrent": 7}),
    ],
)
def test_every_common_option_is_accepted_by_every_type(
    clean_env: Path, cls: type[BaseWorker], concurrency: dict[str, int]
) -> None:
    worker = cls(
        queue_name="reports",
        worker_id="w",
        batch_size=3,
        shutdown_timeout=0,
        poll_interval=0.1,
        prefetch=False,
        heartbeat_interval=5,
        max_job_duration=2.5,
        healthcheck_interval=5,
        middleware=[LoggingMiddleware()],
        max_failures=1,
        metrics_enabled=False,
        metrics_interval=1,
        priority_levels=["critical", "low"],
        broker_url="embedded:///tmp/x.sqlite3",
        store_url="memory://options",
        allowed_modules=["my_app.tasks"],
        **concurrency,
    )
    assert worker.concurrency == next(iter(concurrency.values()), 1)
    assert worker.options.priority_levels == ["critical", "low"]
    assert worker.options.allowed_modules == ["my_app.tasks"]
    assert worker.broker_url == "embedded:///tmp/x.sqlite3"
    assert worker.store_url == "memory://options"


def test_concurrency_defaults(clean_env: Path) -> None:
    assert SyncWorker().concurrency == 1
    assert ThreadPoolWorker().concurrency == 4
    assert AsyncWorker().concurrency == 10
    assert isinstance(SyncWorker().options, SyncWorkerOptions)
    assert isinstance(ThreadPoolWorker().options, ThreadPoolWorkerOptions)


@pytest.mark.parametrize("cls", WORKER_TYPES)
def test_unknown_option_is_named_with_the_worker_type(
    clean_env: Path, cls: type[BaseWorker]
) -> None:
    with pytest.raises(ConfigurationError) as info:
        cls(max_concurrnt=5)
    text = str(info.value)
    assert "'max_concurrnt'" in text
    assert cls.__name__ in text
    assert "unknown option" in text


@pytest.mark.parametrize(
    ("cls", "option", "value"),
    [
        (AsyncWorker, "batch_size", 0),
        (AsyncWorker, "max_concurrent", 0),
        (ThreadPoolWorker, "max_threads", 0),
        (SyncWorker, "shutdown_timeout", -1),
        (AsyncWorker, "poll_interval", 0),
        (AsyncWorker, "priority_levels", ["urgent"]),
        (AsyncWorker, "priority_levels", []),
        (ThreadPoolWorker, "allowed_modules", ["os.."]),
        (AsyncWorker, "queue_name", ""),
        (AsyncWorker, "max_failures", 0),
        (AsyncWorker, "max_job_duration", 0),
        (AsyncWorker, "heartbeat_interval", -5),
        (AsyncWorker, "middleware", [object()]),
        (AsyncWorker, "max_concurrent", 2.5),
    ],
)
def test_out_of_range_value_is_named(
    clean_env: Path, cls: type[BaseWorker], option: str, value: object
) -> None:
    with pytest.raises(ConfigurationError) as info:
        cls(**{option: value})
    text = str(info.value)
    assert re.search(rf"option '{option}(\.\d+)?'", text), text
    assert cls.__name__ in text


def test_bad_priority_level_message_names_the_level(clean_env: Path) -> None:
    with pytest.raises(ConfigurationError, match="'urgent'") as info:
        AsyncWorker(priority_levels=["high", "urgent"])
    assert "critical" in str(info.value), "the allowed levels are listed"


def test_several_problems_are_reported_together(clean_env: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncWorker(batch_size=0, poll_interval=0, max_concurrnt=1)
    text = str(info.value)
    for option in ("batch_size", "poll_interval", "max_concurrnt"):
        assert f"'{option}'" in text


@pytest.mark.parametrize("option", ["max_concurrent", "max_threads"])
def test_sync_worker_refuses_a_concurrency_option(clean_env: Path, option: str) -> None:
    with pytest.raises(ConfigurationError, match=f"SyncWorker: unknown option '{option}'"):
        SyncWorker(**{option: 2})


def test_each_pool_refuses_the_other_pools_concurrency_option(clean_env: Path) -> None:
    with pytest.raises(
        ConfigurationError, match="ThreadPoolWorker: unknown option 'max_concurrent'"
    ):
        ThreadPoolWorker(max_concurrent=2)
    with pytest.raises(ConfigurationError, match="AsyncWorker: unknown option 'max_threads'"):
        AsyncWorker(max_threads=2)


def test_options_are_frozen(clean_env: Path) -> None:
    worker = AsyncWorker()
    with pytest.raises(ValidationError, match="frozen"):
        worker.options.batch_size = 99


def test_default_worker_id_is_host_pid_counter(clean_env: Path) -> None:
    pattern = re.compile(rf"^{re.escape(socket.gethostname())}-{os.getpid()}-(\d+)$")
    first, second = SyncWorker(), AsyncWorker()
    match_first = pattern.match(first.worker_id)
    match_second = pattern.match(second.worker_id)
    assert match_first and match_second, (first.worker_id, second.worker_id)
    assert int(match_second.group(1)) > int(match_first.group(1)), "ids are unique per process"
    assert AsyncWorker(worker_id="mine").worker_id == "mine"


# -- broker and store defaults --------------------------------------------------------------


@pytest.mark.parametrize("cls", WORKER_TYPES)
def test_defaults_are_the_embedded_broker_and_store_under_home(
    clean_env: Path, cls: type[BaseWorker]
) -> None:
    worker = cls()
    assert worker.broker_url == "embedded://"
    assert worker.store_url == f"sqlite://{clean_env.resolve() / 'jobs.sqlite3'}"


def test_environment_broker_and_store(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    monkeypatch.setenv("UNO_JOBS_STORE_URL", "redis://store:6379/2")
    worker = ThreadPoolWorker()
    assert worker.broker_url == "amqp://guest:guest@rabbit:5672//"
    assert worker.store_url == "redis://store:6379/2"


def test_redis_broker_from_environment_means_the_same_redis_store(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "UNO_JOBS_BROKER_URL", "redis://h:6379/4?visibility_timeout=9&key_prefix=app:"
    )
    worker = AsyncWorker()
    assert worker.store_url == "redis://h:6379/4?key_prefix=app:"


def test_options_beat_the_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    monkeypatch.setenv("UNO_JOBS_STORE_URL", "redis://store:6379/2")
    worker = SyncWorker(broker_url="embedded://", store_url="memory://mine")
    assert worker.broker_url == "embedded://"
    assert worker.store_url == "memory://mine"


def test_amqp_broker_without_store_uses_the_embedded_store(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = AsyncWorker(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert worker.store_url == f"sqlite://{clean_env.resolve() / 'jobs.sqlite3'}"


def test_constructing_a_worker_touches_nothing(clean_env: Path) -> None:
    AsyncWorker(broker_url="amqp://guest:guest@127.0.0.1:1//")
    assert not clean_env.exists(), "nothing is created before start()"


def test_an_empty_registry_is_used_as_given() -> None:
    """An empty TaskRegistry (falsy) must not fall back to the default registry."""
    from uno_jobs import TaskRegistry
    from uno_jobs.worker import AsyncWorker

    empty = TaskRegistry()
    worker = AsyncWorker(queue_name="q", broker_url="memory://", registry=empty)
    assert worker._resolver.registry is empty
