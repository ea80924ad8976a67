"""``WorkerPool``: workers of one type on one queue, each in its own OS process, autoscaled.

::

    pool (event loop)                          member process (spawned), one per worker
      control tick every scale_interval:         worker = worker_type(**worker_options)
        reports ◄── multiprocessing queue ◄───── worker.run()  + a reporter task:
        dead member? start a new one               (state, current jobs, in flight, metrics)
        below min? start; autoscale rule           every report_interval seconds
        scale down: SIGTERM (graceful drain)

The autoscaling rule (hysteresis, so the pool does not flap): at each tick,

    load = (messages the members hold + backlog on the broker) / (members x concurrency)

A tick is *high* when the backlog is not empty and ``load >= scale_up_load``; *low* when
the backlog is empty and ``load <= scale_down_load``; anything else resets both counts.
After ``scale_up_ticks`` high ticks in a row one member is added (up to ``max_workers``);
after ``scale_down_ticks`` low ticks in a row the member holding the fewest messages is
stopped gracefully (down to ``min_workers``). Both counts restart after each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import logging
import multiprocessing
import os
import queue as queue_module
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from uno_jobs.errors import ConfigurationError, WorkerStateError
from uno_jobs.worker._base import BaseWorker
from uno_jobs.worker._options import build_options

__all__ = ["WorkerPool", "WorkerPoolOptions"]

log = logging.getLogger("uno_jobs.worker.pool")

_SUMMED = ("jobs_processed_total", "jobs_succeeded", "jobs_failed", "active_jobs")
_pools = itertools.count(1)


class WorkerPoolOptions(BaseModel):
    """The pool's own options (the members' are ``worker_options``)."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    min_workers: int = Field(1, ge=1, le=1000)
    max_workers: int = Field(4, ge=1, le=1000)
    #: Seconds between control ticks (autoscaling, replacing dead members).
    scale_interval: float = Field(5.0, gt=0, le=3600)
    scale_up_load: float = Field(0.8, gt=0)
    scale_down_load: float = Field(0.3, ge=0)
    scale_up_ticks: int = Field(2, ge=1)
    scale_down_ticks: int = Field(6, ge=1)
    #: Seconds between a member's reports of its state and metrics.
    report_interval: float = Field(1.0, gt=0, le=3600)
    #: Modules each member imports before it starts (where the tasks are defined).
    app_modules: list[str] = Field(default_factory=list)
    #: Seconds a member gets to start or stop before it is killed.
    process_timeout: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> WorkerPoolOptions:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers={self.max_workers} < min_workers={self.min_workers}")
        if self.scale_down_load >= self.scale_up_load:
            raise ValueError("scale_down_load must be below scale_up_load (hysteresis)")
        return self


@dataclass
class _Member:
    worker_id: str
    process: BaseProcess
    started_at: float
    stopping: bool = False
    state: str = "starting"
    current_jobs: int = 0
    in_flight: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


class WorkerPool:
    """Workers of one type on one queue, each its own OS process, scaled by load.

    Args:
        queue_name: The queue every member consumes.
        worker_type: A ``BaseWorker`` subclass (importable by its module and name), or the
            name of a registered worker type (``"async"``, ``"thread"``...).
        min_workers: The fewest members; ``start`` starts this many.
        max_workers: The most members autoscaling adds.
        worker_options: The options of each member (picklable), as its type takes them;
            ``worker_id`` is set by the pool (``{pool id}-{n}``).
        **pool_options: See ``WorkerPoolOptions`` (``scale_interval``, ``app_modules``...).

    Raises:
        ConfigurationError: an unknown or out-of-range option, of the pool or the members.
    """

    def __init__(
        self,
        queue_name: str = "default",
        worker_type: type[BaseWorker] | str = "async",
        min_workers: int = 1,
        max_workers: int = 4,
        worker_options: dict[str, Any] | None = None,
        **pool_options: Any,
    ) -> None:
        try:
            self.options = WorkerPoolOptions(
                min_workers=min_workers, max_workers=max_workers, **pool_options
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            where = f"option {err['loc'][0]!r}: " if err["loc"] else ""
            raise ConfigurationError(f"WorkerPool: {where}{err['msg']}") from None
        if isinstance(worker_type, str):
            from uno_jobs.worker._registry import get_worker_type

            worker_type = get_worker_type(worker_type)
        self.worker_type = worker_type
        self.queue_name = queue_name
        self.worker_options = {**(worker_options or {}), "queue_name": queue_name}
        if "worker_id" in self.worker_options:
            raise ConfigurationError("WorkerPool: worker_options must not set worker_id")
        checked = build_options(
            worker_type.options_model, worker_type.__name__, self.worker_options
        )
        self.concurrency: int = checked.concurrency
        self._broker_url: str | None = checked.broker_url
        self.pool_id = f"{socket.gethostname()}-{os.getpid()}-pool{next(_pools)}"
        self.auto_scale = False
        self.replaced = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._reports: Any = None
        self._members: dict[str, _Member] = {}
        self._ids = itertools.count(1)
        #: The last metrics of members that stopped: their jobs still count.
        self._retired: dict[str, dict[str, Any]] = {}
        self._high = self._low = 0
        self._control: asyncio.Task[None] | None = None
        self._queue: Any = None
        self._state = "initialized"

    def __repr__(self) -> str:
        return f"<WorkerPool {self.pool_id} queue={self.queue_name} members={self.size}>"

    @property
    def size(self) -> int:
        """Members running or starting (not those being stopped)."""
        return sum(1 for m in self._members.values() if not m.stopping)

    @property
    def members(self) -> list[str]:
        """The worker ids of the members running or starting."""
        return [m.worker_id for m in self._members.values() if not m.stopping]

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, auto_scale: bool = True) -> None:
        """Start ``min_workers`` members; returns once each of them is consuming.

        Raises:
            WorkerStateError: started twice, or a member died while starting.
        """
        if self._state != "initialized":
            raise WorkerStateError(f"pool {self.pool_id} is {self._state}; start() runs once")
        from uno_jobs.queue import Queue

        self._state = "running"
        self.auto_scale = auto_scale
        self._reports = self._ctx.Queue()
        self._queue = Queue(self.queue_name, broker_url=self._broker_url)
        for _ in range(self.options.min_workers):
            self._spawn()
        try:
            await self._wait_all_running()
        except BaseException:
            await self.shutdown(wait=False)
            raise
        self._control = asyncio.create_task(self._control_loop(), name=f"{self.pool_id}-control")

    async def shutdown(self, wait: bool = True) -> None:
        """Stop every member: graceful (``wait``: each drains) or immediate."""
        if self._state in ("initialized", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopping"
        if self._control is not None:
            self._control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control
        for member in self._members.values():
            self._stop(member, immediate=not wait)
        deadline = time.monotonic() + self.options.process_timeout
        for member in list(self._members.values()):
            timeout = max(0.1, deadline - time.monotonic())
            await asyncio.to_thread(member.process.join, timeout)
            if member.process.is_alive():
                log.warning("pool member %s did not stop; killing it", member.worker_id)
                member.process.kill()
                await asyncio.to_thread(member.process.join, 10)
        self._drain_reports()
        self._retired.update({m.worker_id: m.metrics for m in self._members.values()})
        self._members.clear()
        if self._reports is not None:
            self._reports.close()
            self._reports.cancel_join_thread()
        if self._queue is not None:
            self._queue.close()
        self._state = "stopped"

    # -- metrics ------------------------------------------------------------------------

    async def get_metrics(self) -> dict[str, Any]:
        """The members' metrics together, plus ``workers`` and ``members`` (each one's).

        Counts are summed over every member the pool has had (one stopped by scaling down,
        or dead, counts with its last report); ``active_jobs`` and throughput over the
        current members; averages are weighted by jobs processed;
        ``processing_time_p95_ms``/``p99_ms`` are the largest of the members' (an upper
        bound: percentiles do not add up).
        """
        self._drain_reports()
        current = {m.worker_id: m.metrics for m in self._members.values() if m.metrics}
        every = [*current.values(), *self._retired.values()]

        def summed(key: str, metrics: list[dict[str, Any]]) -> float:
            return sum(float(m.get(key, 0)) for m in metrics)

        total: dict[str, Any] = {key: int(summed(key, every)) for key in _SUMMED}
        total["active_jobs"] = int(summed("active_jobs", list(current.values())))
        processed: int = total["jobs_processed_total"]

        def weighted(key: str) -> float:
            if not processed:
                return 0.0
            parts = (float(m.get(key, 0.0)) * int(m.get("jobs_processed_total", 0)) for m in every)
            return round(sum(parts) / processed, 3)

        total["processing_time_avg_ms"] = weighted("processing_time_avg_ms")
        for key in ("processing_time_p95_ms", "processing_time_p99_ms"):
            total[key] = max((float(m.get(key, 0.0)) for m in every), default=0.0)
        total["queue_wait_time_avg_ms"] = weighted("queue_wait_time_avg_ms")
        total["throughput_jobs_per_minute"] = round(
            summed("throughput_jobs_per_minute", list(current.values())), 3
        )
        total["error_rate"] = round(total["jobs_failed"] / processed, 4) if processed else 0.0
        total["workers"] = self.size
        total["members"] = current
        return total

    # -- members ------------------------------------------------------------------------

    def _spawn(self) -> _Member:
        worker_id = f"{self.pool_id}-{next(self._ids)}"
        process = self._ctx.Process(
            target=_member_main,
            args=(
                self.worker_type,
                {**self.worker_options, "worker_id": worker_id},
                self.options.app_modules,
                self._reports,
                self.options.report_interval,
            ),
            name=worker_id,
            daemon=False,
        )
        process.start()
        member = _Member(worker_id, process, time.monotonic())
        self._members[worker_id] = member
        log.info("pool %s: member %s started (pid %s)", self.pool_id, worker_id, process.pid)
        return member

    def _stop(self, member: _Member, immediate: bool = False) -> None:
        if member.stopping and not immediate:
            return  # already draining: another SIGTERM would force it
        member.stopping = True
        pid = member.process.pid
        if pid is None or not member.process.is_alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            if immediate:  # a second signal: the member stops at once
                os.kill(pid, signal.SIGTERM)

    async def _wait_all_running(self) -> None:
        deadline = time.monotonic() + self.options.process_timeout
        while True:
            self._drain_reports()
            starting = [m for m in self._members.values() if m.state == "starting"]
            for member in starting:
                if member.process.exitcode is not None:
                    raise WorkerStateError(
                        f"pool member {member.worker_id} exited with code "
                        f"{member.process.exitcode} while starting"
                    )
            if not starting:
                return
            if time.monotonic() > deadline:
                raise WorkerStateError(
                    f"pool member(s) {', '.join(m.worker_id for m in starting)} did not start "
                    f"within {self.options.process_timeout:g} s"
                )
            await asyncio.sleep(0.05)

    def _drain_reports(self) -> None:
        if self._reports is None:
            return
        while True:
            try:
                worker_id, state, current, in_flight, metrics = self._reports.get_nowait()
            except (queue_module.Empty, OSError, ValueError):
                return
            member = self._members.get(worker_id)
            if member is None and worker_id in self._retired:
                self._retired[worker_id] = metrics  # its last report, sent as it stopped
            elif member is not None:
                member.state, member.current_jobs, member.in_flight = state, current, in_flight
                member.metrics = metrics

    # -- control ------------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.scale_interval)
            try:
                await self._tick()
            except Exception:
                log.exception("pool %s: control tick failed", self.pool_id)

    async def _tick(self) -> None:
        self._drain_reports()
        self._reap()
        while self.size < self.options.min_workers:
            self._spawn()
        if self.auto_scale:
            backlog = await self._queue.size()
            self._autoscale(backlog)

    def _reap(self) -> None:
        for member in list(self._members.values()):
            if member.process.exitcode is None:
                continue
            del self._members[member.worker_id]
            self._retired[member.worker_id] = member.metrics
            if not member.stopping:
                self.replaced += 1
                log.warning(
                    "pool %s: member %s died (exit code %s); replacing it",
                    self.pool_id,
                    member.worker_id,
                    member.process.exitcode,
                )

    def _autoscale(self, backlog: int) -> None:
        """One tick of the rule in the module docstring."""
        active = [m for m in self._members.values() if not m.stopping]
        capacity = max(1, len(active) * self.concurrency)
        load = (sum(m.in_flight for m in active) + backlog) / capacity
        opts = self.options
        if backlog > 0 and load >= opts.scale_up_load:
            self._high, self._low = self._high + 1, 0
        elif backlog == 0 and load <= opts.scale_down_load:
            self._high, self._low = 0, self._low + 1
        else:
            self._high = self._low = 0
        if self._high >= opts.scale_up_ticks and len(active) < opts.max_workers:
            self._high = 0
            log.info("pool %s: load %.2f, backlog %d: adding a member", self.pool_id, load, backlog)
            self._spawn()
        elif self._low >= opts.scale_down_ticks and len(active) > opts.min_workers:
            self._low = 0
            idlest = min(active, key=lambda m: (m.in_flight, -m.started_at))
            log.info("pool %s: load %.2f: stopping member %s", self.pool_id, load, idlest.worker_id)
            self._stop(idlest)


# -- inside a member process -------------------------------------------------------------


def _member_main(
    worker_type: type[BaseWorker],
    options: dict[str, Any],
    app_modules: list[str],
    reports: Any,
    report_interval: float,
) -> None:
    """A member's process: import the apps, run one worker until SIGTERM."""
    from uno_jobs.logs import configure_logging

    configure_logging(logging.INFO)
    for module in app_modules:
        importlib.import_module(module)
    code = asyncio.run(_serve(worker_type(**options), reports, report_interval))
    reports.close()
    reports.join_thread()
    raise SystemExit(code)


async def _serve(worker: BaseWorker, reports: Any, interval: float) -> int:
    reporter = asyncio.create_task(_report(worker, reports, interval))
    try:
        return await worker.run()
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await _send(worker, reports)


async def _report(worker: BaseWorker, reports: Any, interval: float) -> None:
    while True:
        if worker.state != "initialized" and worker.state != "starting":
            await _send(worker, reports)
            await asyncio.sleep(interval)
        else:
            await asyncio.sleep(0.02)


async def _send(worker: BaseWorker, reports: Any) -> None:
    metrics = await worker.get_metrics()
    current = int(metrics["active_jobs"])
    reports.put((worker.worker_id, worker.state, current, worker.in_flight, metrics))
