"""One measurement of each system on one broker: uno_jobs, raw kombu, Celery, Dramatiq.

Each function runs its producer and its worker (or the kombu loop) in subprocesses and
returns ``Sample`` values; a failed step becomes a sample with ``seconds=None`` and the
reason, so one broken system does not lose the rest of the run.

Timing:

- uno_jobs, Celery and Dramatiq: from the start of the first job to the end of job N,
  measured in the worker process (uno_jobs: ``bench_tasks.first_call`` and
  ``stats.last_completed``; Celery and Dramatiq: ``benchmarks._completion``). Start-up,
  imports and connect are outside the window; the log has the time from uno_jobs'
  ``start()`` call and from the peers' launch beside it.
- raw kombu: each publish loop and each consume loop, measured around the loop.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks import _proc
from benchmarks._brokers import RunNames
from benchmarks.bench_tasks import ASYNC_TASK, SYNC_TASK
from benchmarks.report import Sample

__all__ = [
    "CELERY_POOLS",
    "KOMBU_PREFETCHES",
    "RUNNERS",
    "Context",
    "peer_commands",
    "register_amqp",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
KOMBU_PREFETCHES = (100, 150)
_MIN_RATE = 50.0  # jobs/s below which a worker run is declared stalled
_UNO_LEVELS = ("", ".critical", ".high", ".low", ".dead")
#: Celery's worker pools: (pool, concurrency). The targets compare one worker process of
#: each system, so prefork runs one child (its parent consumes, the child executes).
CELERY_POOLS: dict[str, tuple[str, int]] = {
    "celery": ("solo", 1),
    "celery_threads": ("threads", 8),
    "celery_prefork": ("prefork", 1),
}


def register_amqp(names: RunNames, system: str, queue: str) -> None:
    """Remember the RabbitMQ queues and exchanges ``system`` makes for ``queue``."""
    if system.startswith("uno"):
        levels = [queue + suffix for suffix in _UNO_LEVELS]
        names.amqp_queues += levels
        names.amqp_exchanges += levels
    elif system == "dramatiq":
        names.amqp_queues += [queue, f"{queue}.DQ", f"{queue}.XQ"]
    else:  # Celery and raw kombu: a queue and a direct exchange of its name
        names.amqp_queues.append(queue)
        names.amqp_exchanges.append(queue)


@dataclass
class Context:
    """What every measurement of a run shares.

    Attributes:
        names: Unique names of the run and what to clean up.
        jobs: Jobs per uno_jobs and kombu throughput measurement.
        peer_jobs: Jobs per Celery and Dramatiq throughput measurement (may be capped).
        workdir: Temporary folder for logs and ``UNO_JOBS_HOME`` folders.
        round_no: The current round, from 1.
        log: Where progress lines go.
        enqueue_jobs: Jobs per enqueue-rate measurement (each way of enqueueing).
        latency_jobs: Latency jobs per measurement (sent 5 ms apart).
        idle_seconds: How long a ready worker idles before its memory is read.
        backlog: Jobs queued before the worker starts, for its memory under a backlog.
        backlog_seconds: How long the memory of a worker with a backlog is sampled.
    """

    names: RunNames
    jobs: int
    peer_jobs: int
    workdir: Path
    round_no: int = 1
    log: Callable[[str], None] = print
    enqueue_jobs: int = 5_000
    latency_jobs: int = 500
    idle_seconds: float = 3.0
    backlog: int = 100_000
    backlog_seconds: float = 10.0

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.update(extra)
        return env

    def log_path(self, what: str) -> Path:
        return self.workdir / f"r{self.round_no}-{what}.log"

    def worker_timeout(self, jobs: int) -> float:
        return 60.0 + jobs / _MIN_RATE


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _failed(
    ctx: Context, system: str, broker: str, metric: str, jobs: int, exc: Exception
) -> Sample:
    ctx.log(f"  ! {system} on {broker}, {metric}: {exc}")
    return Sample(system, broker, metric, jobs, None, ctx.round_no, str(exc).splitlines()[0])


def run_uno(ctx: Context, system: str, broker: str) -> list[Sample]:
    """uno_jobs: enqueue N jobs (batches of 1,000), then drain them with ONE worker process."""
    kind = system.removeprefix("uno_")
    task = ASYNC_TASK if kind == "async" else SYNC_TASK
    queue = ctx.names.queue(system, broker, ctx.round_no)
    url = ctx.names.uno_url(broker)
    home = ctx.workdir / f"home-{queue}"
    home.mkdir()
    env = ctx.env(UNO_JOBS_HOME=str(home))
    if broker == "amqp":
        register_amqp(ctx.names, system, queue)
    log = ctx.log_path(queue)
    base = ["--broker", url, "--queue", queue, "--jobs", str(ctx.jobs)]
    samples = []
    try:
        runner = _py("benchmarks.uno_runner")
        enq = _proc.run_json([*runner, "enqueue", *base, "--task", task], env, 600, log)
        samples.append(Sample(system, broker, "prefill", ctx.jobs, enq["seconds"], ctx.round_no))
        if enq["size"] != ctx.jobs:
            raise _proc.StepError(f"queue holds {enq['size']} jobs after enqueue, not {ctx.jobs}")
        timeout = ctx.worker_timeout(ctx.jobs)
        cmd = [*runner, "work", "--kind", kind, *base, "--timeout", str(timeout)]
        res = _proc.run_json(cmd, env, timeout + 60, log)
        # Celery's and Dramatiq's window: the first job's start to job N's end. (``seconds``,
        # from the ``start()`` call with the connect inside, is logged beside it.)
        window = res.get("first_to_last_seconds")
        if window is None:
            raise _proc.StepError("the worker recorded no first job start")
        samples.append(Sample(system, broker, "throughput", ctx.jobs, window, ctx.round_no))
        ctx.log(f"    {system}/{broker}: {_details(res)}")
    except _proc.StepError as exc:
        metric = "throughput" if samples else "prefill"
        samples.append(_failed(ctx, system, broker, metric, ctx.jobs, exc))
    finally:
        if broker != "embedded":
            try:
                _proc.run_json([*_py("benchmarks.uno_runner"), "delete", *base[:4]], env, 60, log)
            except _proc.StepError as exc:
                ctx.log(f"  ! deleting {queue}: {exc}")
        shutil.rmtree(home, ignore_errors=True)
    return samples


def _details(result: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
    )


def run_kombu(ctx: Context, system: str, broker: str) -> list[Sample]:
    """Raw kombu: publish N (no confirms), consume+ack N, once per prefetch count."""
    queue = ctx.names.queue(system, broker, ctx.round_no)
    if broker == "amqp":
        register_amqp(ctx.names, system, queue)
    cmd = [
        *_py("benchmarks.kombu_runner"),
        "--broker", ctx.names.url(broker), "--queue", queue, "--jobs", str(ctx.jobs),
        "--prefetch", ",".join(str(p) for p in KOMBU_PREFETCHES),
        "--key-prefix", ctx.names.key_prefix,
    ]  # fmt: skip
    timeout = len(KOMBU_PREFETCHES) * 2 * ctx.worker_timeout(ctx.jobs)
    try:
        res = _proc.run_json(cmd, ctx.env(), timeout, ctx.log_path(queue))
    except _proc.StepError as exc:
        return [_failed(ctx, system, broker, "consume_p100", ctx.jobs, exc)]
    published = ctx.jobs * len(res["publish_seconds"])
    rows = [("publish", published, sum(res["publish_seconds"]))]
    rows += [(f"consume_p{p}", ctx.jobs, res[f"consume_p{p}_seconds"]) for p in KOMBU_PREFETCHES]
    return [Sample(system, broker, m, n, sec, ctx.round_no) for m, n, sec in rows]


def peer_commands(system: str, queue: str, broker: str) -> tuple[list[str], list[str]]:
    """The producer command and the worker command of Celery (a pool) or Dramatiq.

    Celery's solo pool on RabbitMQ gets ``--prefetch-multiplier 25``: at the default of 4
    it stalls for 10-20 s at a time on this machine. Every other pool keeps the default.
    """
    if system in CELERY_POOLS:
        pool, concurrency = CELERY_POOLS[system]
        worker = [
            *_py("celery", "-A", "benchmarks.celery_app", "worker"),
            "-P", pool, "-c", str(concurrency), "-Q", queue, "--without-heartbeat",
            "--without-gossip", "--without-mingle", "-l", "warning",
        ]  # fmt: skip
        if pool == "solo" and broker == "amqp":
            worker += ["--prefetch-multiplier", "25"]
        return _py("benchmarks.celery_app"), worker
    worker = _py("dramatiq", "benchmarks.dramatiq_app", "-p", "1", "-t", "8", "-Q", queue)
    return _py("benchmarks.dramatiq_app"), worker


def _wait_done(ctx: Context, key: str, proc: Any, timeout: float) -> dict[str, Any]:
    client = redis.Redis.from_url(ctx.names.redis_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            raw = client.get(key)
            if raw is not None:
                done: dict[str, Any] = json.loads(raw)
                return done
            if proc.poll() is not None:
                raise _proc.StepError(f"worker exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                count = client.get(f"{key}:count")
                raise _proc.StepError(
                    f"not done after {timeout:g} s (about {int(count or 0)} jobs finished)"
                )
            time.sleep(0.05)  # harness polling only: the times come from the worker
    finally:
        client.close()


def run_peer(ctx: Context, system: str, broker: str) -> list[Sample]:
    """Celery or Dramatiq: send N no-op jobs, then drain them with ONE worker process."""
    queue = ctx.names.queue(system, broker, ctx.round_no)
    jobs = ctx.peer_jobs
    if broker == "amqp":
        register_amqp(ctx.names, system, queue)
    key = ctx.names.done_key(queue)
    env = ctx.env(
        BENCH_BROKER_URL=ctx.names.url(broker), BENCH_QUEUE=queue,
        BENCH_KEY_PREFIX=ctx.names.key_prefix, BENCH_JOBS=str(jobs), BENCH_DONE_KEY=key,
        BENCH_REDIS_URL=ctx.names.redis_url,
    )  # fmt: skip
    log = ctx.log_path(queue)
    producer, worker_cmd = peer_commands(system, queue, broker)
    samples = []
    try:
        sent = _proc.run_json([*producer, str(jobs)], env, 600, log)
        samples.append(Sample(system, broker, "prefill", jobs, sent["seconds"], ctx.round_no))
        launched = time.time()
        proc = _proc.start(worker_cmd, env, log)
        try:
            done = _wait_done(ctx, key, proc, ctx.worker_timeout(jobs))
        finally:
            t_stop = time.monotonic()
            # A warm shutdown (SIGTERM); Celery's takes ~10 s on RabbitMQ without heartbeats
            # (its event loop notices the signal at its next poll timeout): outside the timing.
            _proc.stop(proc)
            stop_seconds = time.monotonic() - t_stop
        seconds = done["last"] - done["first"]
        samples.append(Sample(system, broker, "throughput", jobs, seconds, ctx.round_no))
        ctx.log(
            f"    {system}/{broker}: seconds={seconds:.3f}, "
            f"from launch={done['last'] - launched:.3f}, stop={stop_seconds:.1f}"
        )
    except _proc.StepError as exc:
        metric = "throughput" if samples else "prefill"
        samples.append(_failed(ctx, system, broker, metric, jobs, exc))
    return samples


RUNNERS: dict[str, Callable[[Context, str, str], list[Sample]]] = {
    "uno_sync": run_uno,
    "uno_thread": run_uno,
    "uno_async": run_uno,
    "uno_process": run_uno,
    "kombu": run_kombu,
    "celery": run_peer,
    "celery_threads": run_peer,
    "celery_prefork": run_peer,
    "dramatiq": run_peer,
}
