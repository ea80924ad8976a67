"""The measurements beside throughput: enqueue rates, latency with idle memory, and memory
under a backlog, for each system on one broker.

- ``run_enqueue``: each way a system can enqueue, N jobs each, into a fresh queue that is
  deleted afterwards (``benchmarks/README.md`` lists the ways).
- ``run_latency``: start ONE worker (raw kombu: a consume+ack loop, the transport's
  floor), ping it until it answers, let it idle ``idle_seconds`` and read its memory
  (``rss_idle``, ``pss_idle``), then send the latency jobs 5 ms apart
  (``benchmarks._latency``) and take p50/p99 of what the task recorded.
  Every producer here waits for publisher confirms on RabbitMQ (``BENCH_CONFIRM=1``).
- ``run_backlog``: queue ``backlog`` no-op jobs, start the worker and take the peak memory
  of its process tree over the first ``backlog_seconds`` of the drain (``rss_backlog``).

Memory figures are MiB of the worker's process tree (``benchmarks._memory``); latencies
are milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from typing import Any

import redis

from benchmarks import _proc
from benchmarks._brokers import delete_amqp
from benchmarks._memory import peak_tree_memory, tree_memory
from benchmarks._systems import CELERY_POOLS, Context, _failed, _py, peer_commands, register_amqp
from benchmarks.bench_tasks import ASYNC_LATENCY_TASK, ASYNC_TASK, LATENCY_TASK, SYNC_TASK
from benchmarks.report import Sample

__all__ = ["run_backlog", "run_enqueue", "run_latency"]

_LATENCY_INTERVAL_SECONDS = 0.005


def _queue(ctx: Context, system: str, broker: str, what: str) -> str:
    queue = ctx.names.queue(f"{system}_{what}", broker, ctx.round_no)
    if broker == "amqp":
        register_amqp(ctx.names, system, queue)
    return queue


def _env(ctx: Context, system: str, broker: str, queue: str, **extra: str) -> dict[str, str]:
    env = ctx.env(
        BENCH_BROKER_URL=ctx.names.url(broker), BENCH_QUEUE=queue,
        BENCH_KEY_PREFIX=ctx.names.key_prefix, BENCH_REDIS_URL=ctx.names.redis_url, **extra,
    )  # fmt: skip
    if system.startswith("uno"):
        home = ctx.workdir / f"home-{queue}"
        home.mkdir(exist_ok=True)
        env["UNO_JOBS_HOME"] = str(home)
    return env


def _uno_base(ctx: Context, broker: str, queue: str) -> list[str]:
    return [*_py("benchmarks.uno_runner"), "--broker", ctx.names.uno_url(broker), "--queue", queue]


def _uno(ctx: Context, action: str, broker: str, queue: str, *more: str) -> list[str]:
    base = _uno_base(ctx, broker, queue)
    return [*base[:3], action, *base[3:], *more]


def _kombu(ctx: Context, broker: str, queue: str, *more: str) -> list[str]:
    return [
        *_py("benchmarks.kombu_runner"), "--broker", ctx.names.url(broker), "--queue", queue,
        "--key-prefix", ctx.names.key_prefix, *more,
    ]  # fmt: skip


def _worker_cmd(ctx: Context, system: str, broker: str, queue: str) -> list[str]:
    if system == "kombu":
        return _kombu(ctx, broker, queue, "--serve")
    if system.startswith("uno"):
        return _uno(ctx, "serve", broker, queue, "--kind", system.removeprefix("uno_"))
    return peer_commands(system, queue, broker)[1]


def _producer(ctx: Context, system: str, broker: str, queue: str, action: str) -> list[str]:
    """The command that pings (``ping``) or sends latency jobs (``latency``)."""
    if system == "kombu":
        return _kombu(ctx, broker, queue, f"--{action}", "--jobs", str(ctx.latency_jobs))
    if system.startswith("uno"):
        task = ASYNC_LATENCY_TASK if system == "uno_async" else LATENCY_TASK
        jobs = str(ctx.latency_jobs)
        return _uno(ctx, action, broker, queue, "--task", task, "--jobs", jobs)
    producer = peer_commands(system, queue, broker)[0]
    return [*producer, action, *([str(ctx.latency_jobs)] if action == "latency" else [])]


def _stop(system: str, proc: subprocess.Popen[bytes]) -> None:
    """Stop the worker once its measurement is over.

    uno_jobs and Dramatiq stop on SIGTERM within a second or two. Celery's warm shutdown
    waits for its next poll timeout (~10 s on RabbitMQ without heartbeats) and its
    prefork pool's cold one hung for 30 s here, so Celery's process group is killed: the
    measurement is over and the session's queue is deleted next.
    """
    if system in CELERY_POOLS:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    else:
        _proc.stop(proc)


def _clean(ctx: Context, system: str, broker: str, queue: str, env: dict[str, str]) -> None:
    """Delete the session's queue now: a 100,000-job backlog should not wait for the end.

    On Redis the run's keys are all deleted after each step anyway (``run.measure``).
    """
    try:
        if system.startswith("uno"):
            if broker != "embedded":
                _proc.run_json(_uno(ctx, "delete", broker, queue), env, 60, ctx.log_path(queue))
            shutil.rmtree(env["UNO_JOBS_HOME"], ignore_errors=True)  # SQLite store, embedded
        elif broker == "amqp":  # Celery, Dramatiq, raw kombu
            names = [queue, f"{queue}.DQ", f"{queue}.XQ"] if system == "dramatiq" else [queue]
            delete_amqp(ctx.names.amqp_url, names, [] if system == "dramatiq" else [queue])
    except Exception as exc:
        ctx.log(f"  ! deleting {queue}: {exc}")


def run_enqueue(ctx: Context, system: str, broker: str) -> list[Sample]:
    """Time each way ``system`` enqueues, ``enqueue_jobs`` jobs each."""
    queue = _queue(ctx, system, broker, "enq")
    env = _env(ctx, system, broker, queue)
    log = ctx.log_path(queue)
    jobs = ctx.enqueue_jobs
    timeout = 120 + jobs / 20
    # (metric, command, key in its JSON, extra environment)
    steps: list[tuple[str, list[str], str, dict[str, str]]] = []
    confirmable = broker == "amqp"  # elsewhere every publish waits for its reply anyway
    if system.startswith("uno"):
        cmd = _uno(ctx, "enqueue-rates", broker, queue, "--jobs", str(jobs), "--task", SYNC_TASK)
        steps = [
            ("enq_single_conf", cmd, "single_sync", {}),
            ("enq_single_async_conf", cmd, "single_async", {}),
            ("enq_bulk_conf", cmd, "bulk", {}),
        ]
    elif system == "kombu":
        cmd = _kombu(ctx, broker, queue, "--rates", "--jobs", str(jobs))
        steps = [("enq_single_conf", cmd, "confirmed", {})]
        if confirmable:
            steps.append(("enq_single_unconf", cmd, "unconfirmed", {}))
    else:
        cmd = [*peer_commands(system, queue, broker)[0], "rates", str(jobs)]
        modes = [("conf", {"BENCH_CONFIRM": "1"})]
        if confirmable:
            modes.append(("unconf", {}))
        for mode, extra in modes:
            steps.append((f"enq_single_{mode}", cmd, "single", extra))
            if system in CELERY_POOLS:
                steps.append((f"enq_bulk_{mode}", cmd, "bulk", extra))
    samples: list[Sample] = []
    # One run of a command reports several ways; a failed run is not repeated.
    results: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], Any] = {}
    try:
        for metric, cmd, key, extra in steps:
            cache_key = (tuple(cmd), tuple(sorted(extra.items())))
            if cache_key not in results:
                try:
                    results[cache_key] = _proc.run_json(cmd, {**env, **extra}, timeout, log)
                except _proc.StepError as exc:
                    results[cache_key] = exc
            result = results[cache_key]
            if isinstance(result, _proc.StepError):
                samples.append(_failed(ctx, system, broker, metric, jobs, result))
            else:
                samples.append(Sample(system, broker, metric, jobs, result[key], ctx.round_no))
    finally:
        _clean(ctx, system, broker, queue, env)
    return samples


def _wait_latencies(ctx: Context, key: str, jobs: int, proc: subprocess.Popen[bytes]) -> list[int]:
    client = redis.Redis.from_url(ctx.names.redis_url)
    deadline = time.monotonic() + 60
    try:
        while (count := int(client.llen(key))) < jobs:
            if proc.poll() is not None:
                raise _proc.StepError(f"worker exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise _proc.StepError(f"only {count} of {jobs} latencies reported after 60 s")
            time.sleep(0.05)  # harness polling only: the latencies come from the worker
        return [int(v) for v in client.lrange(key, 0, -1)]
    finally:
        client.delete(key, f"{key}:ready")
        client.close()


def run_latency(ctx: Context, system: str, broker: str) -> list[Sample]:
    """Idle memory, then enqueue-to-start latency p50/p99, of ONE worker of ``system``."""
    from benchmarks._latency import percentile

    queue = _queue(ctx, system, broker, "lat")
    key = f"{ctx.names.key_prefix}lat:{queue}"
    jobs = ctx.latency_jobs
    env = _env(
        ctx, system, broker, queue,
        BENCH_LAT_KEY=key, BENCH_CONFIRM="1",
    )  # fmt: skip
    log = ctx.log_path(queue)
    samples: list[Sample] = []
    metric = "rss_idle"
    proc = _proc.start(_worker_cmd(ctx, system, broker, queue), env, log)
    try:
        _proc.run_json(_producer(ctx, system, broker, queue, "ping"), env, 180, log)
        time.sleep(ctx.idle_seconds)  # the definition of idle: this long with nothing to do
        mem = tree_memory(proc.pid)
        samples += [
            Sample(system, broker, "rss_idle", 0, None, ctx.round_no, amount=mem.rss_mib),
            Sample(system, broker, "pss_idle", 0, None, ctx.round_no, amount=mem.pss_mib),
        ]
        metric = "latency_p50"
        timeout = 120 + jobs * _LATENCY_INTERVAL_SECONDS * 2
        sent = _proc.run_json(_producer(ctx, system, broker, queue, "latency"), env, timeout, log)
        ms = [n / 1e6 for n in _wait_latencies(ctx, key, jobs, proc)]
        for pct in (50, 99):
            value = percentile(ms, pct)
            samples.append(
                Sample(system, broker, f"latency_p{pct}", jobs, None, ctx.round_no, amount=value)
            )
        ctx.log(
            f"    {system}/{broker}: idle rss {mem.rss_mib:.1f} MiB ({mem.processes} process(es)),"
            f" latency p50 {percentile(ms, 50):.2f} ms p99 {percentile(ms, 99):.2f} ms"
            f" max {max(ms):.2f} ms; enqueue call p50 {sent['call_p50_ms']:.2f} ms"
            f" p99 {sent['call_p99_ms']:.2f} ms; late by up to {sent['late_seconds'] * 1e3:.1f} ms"
        )
    except _proc.StepError as exc:
        samples.append(_failed(ctx, system, broker, metric, jobs, exc))
    finally:
        _stop(system, proc)
        _clean(ctx, system, broker, queue, env)
    return samples


def run_backlog(ctx: Context, system: str, broker: str) -> list[Sample]:
    """Peak memory of ONE worker of ``system`` over the first seconds of a big backlog."""
    queue = _queue(ctx, system, broker, "bl")
    env = _env(ctx, system, broker, queue)
    log = ctx.log_path(queue)
    jobs = ctx.backlog
    samples: list[Sample] = []
    if system.startswith("uno"):
        task = ASYNC_TASK if system == "uno_async" else SYNC_TASK
        prefill = _uno(ctx, "enqueue", broker, queue, "--jobs", str(jobs), "--task", task)
    else:
        prefill = [*peer_commands(system, queue, broker)[0], str(jobs)]
    try:
        _proc.run_json(prefill, env, 120 + jobs / 50, log)
        proc = _proc.start(_worker_cmd(ctx, system, broker, queue), env, log)
        try:
            peak = peak_tree_memory(proc.pid, ctx.backlog_seconds)
            if proc.poll() is not None:
                raise _proc.StepError(f"worker exited with code {proc.returncode}")
        finally:
            _stop(system, proc)
        for metric, value in (("rss_backlog", peak.rss_mib), ("pss_backlog", peak.pss_mib)):
            samples.append(Sample(system, broker, metric, jobs, None, ctx.round_no, amount=value))
        ctx.log(f"    {system}/{broker}: backlog rss peak {peak.rss_mib:.1f} MiB")
    except _proc.StepError as exc:
        samples.append(_failed(ctx, system, broker, "rss_backlog", jobs, exc))
    finally:
        _clean(ctx, system, broker, queue, env)
    return samples
