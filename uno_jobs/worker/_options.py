"""Worker options: one pydantic model per worker type, validated at construction.

A typo or an out-of-range value raises ``ConfigurationError`` naming the option, never a
silently ignored keyword (STYLE.md §5).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from uno_jobs.errors import ConfigurationError
from uno_jobs.message import PRIORITY_LEVELS
from uno_jobs.middleware import Middleware
from uno_jobs.tasks import TaskRegistry, check_allowed_prefix

__all__ = [
    "AsyncWorkerOptions",
    "SyncWorkerOptions",
    "ThreadPoolWorkerOptions",
    "WorkerOptions",
    "build_options",
]


class WorkerOptions(BaseModel):
    """Options every worker type takes (WORKERS.md "Worker Configuration")."""

    # defer_build: a model's validator is built on first use, so a worker process builds
    # its own type's options only (about 1.3 MB less resident than building them all).
    model_config = ConfigDict(
        defer_build=True, extra="forbid", frozen=True, arbitrary_types_allowed=True
    )

    #: Name of the option that sets the concurrency of this worker type, if any.
    concurrency_option: ClassVar[str | None] = None

    queue_name: str = Field("default", min_length=1, max_length=200)
    worker_id: str | None = Field(None, min_length=1, max_length=200)
    batch_size: int = Field(10, ge=1, le=10_000)
    shutdown_timeout: float = Field(30.0, ge=0)
    poll_interval: float = Field(1.0, gt=0, le=3600)
    prefetch: bool = True
    heartbeat_interval: float = Field(30.0, gt=0)
    max_job_duration: float | None = Field(None, gt=0)
    healthcheck_interval: float = Field(60.0, gt=0)
    middleware: list[Middleware | str] = Field(default_factory=list)
    max_failures: int | None = Field(None, ge=1)
    metrics_enabled: bool = True
    metrics_interval: float = Field(10.0, gt=0)
    priority_levels: list[str] | None = None
    broker_url: str | None = None
    store_url: str | None = None
    #: Also write outcomes where a Celery Redis result backend reads them
    #: (``uno_jobs.celery_results``); ``None``: off.
    celery_results_url: str | None = Field(None, min_length=1)
    allowed_modules: list[str] | None = None
    registry: TaskRegistry | None = None
    retry_policy: Any = "fixed"
    #: Metrics exporters by name (plugins' ``uno_jobs_metrics_exporters``) or as objects.
    metrics_exporters: list[Any] = Field(default_factory=list)
    #: Serve ``/livez`` and ``/readyz`` on this port (``None``: off; 0: any free port).
    probe_port: int | None = Field(None, ge=0, le=65535)
    probe_host: str = "127.0.0.1"
    #: At start the worker raises the interpreter's first garbage-collection threshold
    #: (``gc.get_threshold()[0]``, 700 by default) to at least this many objects; ``None``
    #: leaves it alone. Objects that outlive a few jobs (spans waiting for their export,
    #: prefetched messages) are otherwise traversed by a collection every few jobs: with
    #: every trace sampled that cost ~45 µs per job (docs/benchmarks.md, "Garbage
    #: collection").
    gc_threshold: int | None = Field(20_000, ge=1)
    #: The first worker started in a process collects the young generations, then moves
    #: every object still tracked (modules, the application's set-up) to the interpreter's
    #: permanent generation (``gc.freeze()``), which collections no longer walk: a full
    #: collection then costs in proportion to what jobs left alive, not to the whole heap
    #: (17-20 ms → under 1 ms at a worker's start). Once per process; cycles among those
    #: objects, garbage then or later, are not collected. ``False``: leave the collector.
    gc_freeze: bool = True

    @field_validator("middleware")
    @classmethod
    def _middleware(cls, value: list[Middleware | str]) -> list[Middleware | str]:
        for item in value:
            if isinstance(item, str) and not item:
                raise ValueError("a middleware name must not be empty")
        return value

    @field_validator("retry_policy")
    @classmethod
    def _retry_policy(cls, value: Any) -> Any:
        if (isinstance(value, str) and value) or callable(getattr(value, "next_delay", None)):
            return value
        raise ValueError("must be a retry policy name or an object with next_delay()")

    @field_validator("priority_levels")
    @classmethod
    def _levels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one level")
        for level in value:
            if level not in PRIORITY_LEVELS:
                raise ValueError(f"unknown level {level!r} (allowed: {', '.join(PRIORITY_LEVELS)})")
        return value

    @field_validator("celery_results_url")
    @classmethod
    def _celery_results(cls, value: str | None) -> str | None:
        if value is not None:
            from uno_jobs.celery_results import CeleryResults

            CeleryResults(value).close()  # checks the URL; connects to nothing
        return value

    @field_validator("allowed_modules")
    @classmethod
    def _prefixes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return [check_allowed_prefix(p) for p in value]

    @property
    def concurrency(self) -> int:
        name = self.concurrency_option
        return int(getattr(self, name)) if name else 1


class SyncWorkerOptions(WorkerOptions):
    pass


class AsyncWorkerOptions(WorkerOptions):
    concurrency_option: ClassVar[str | None] = "max_concurrent"
    max_concurrent: int = Field(10, ge=1, le=100_000)


class ThreadPoolWorkerOptions(WorkerOptions):
    concurrency_option: ClassVar[str | None] = "max_threads"
    max_threads: int = Field(4, ge=1, le=1_000)


def build_options(model: type[WorkerOptions], owner: str, values: dict[str, Any]) -> Any:
    """Validate ``values`` into ``model``; errors name the worker type and the option."""
    try:
        return model(**values)
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}
        for err in exc.errors():
            option = _option_path(err["loc"])
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(sorted(model.model_fields))
                problems.setdefault(option, []).append(f"unknown option (allowed: {allowed})")
            else:
                problems.setdefault(option, []).append(f"{err['msg']} (got {err.get('input')!r})")
        text = "; ".join(_describe(option, msgs) for option, msgs in problems.items())
        raise ConfigurationError(f"{owner}: {text}") from None


def _describe(option: str, messages: list[str]) -> str:
    if messages[0].startswith("unknown option"):
        return f"unknown option {option!r} {messages[0].removeprefix('unknown option ')}"
    return f"option {option!r}: " + " or ".join(dict.fromkeys(messages))


def _option_path(loc: tuple[int | str, ...]) -> str:
    """``middleware.0`` from pydantic's ``('middleware', 0, 'is-instance[Middleware]')``."""
    parts = [str(loc[0])] if loc else ["?"]
    for item in loc[1:]:
        if not isinstance(item, int):
            break
        parts.append(str(item))
    return ".".join(parts)
