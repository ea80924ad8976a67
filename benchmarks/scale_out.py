"""Scale-out: one worker process against two on one queue, uno_jobs and Dramatiq, one run.

For each system and process count, ``--jobs`` no-op jobs are queued on a fresh RabbitMQ
queue, then the worker processes are started (uno_jobs: ``uno-jobs worker --type async
--concurrency 50`` per process, job store on Redis as a multi-process deployment has it;
Dramatiq: ``dramatiq -p N -t 8``). The rate is measured on the broker's ready count, the
same way for both systems: the time from the queue falling below 95% of the jobs to it
falling below 5%, i.e. the steady middle 90% (process start-up and the tail are left
out). Rounds interleave the four configurations; medians are compared.

    .venv/bin/python benchmarks/scale_out.py [--jobs 20000] [--rounds 3]

Target (issue "Scale out"): uno_jobs with two processes >= 1.5x one; Dramatiq's ratio is
reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_DB = 6
TARGET = 1.5


def ready_count(conn: Connection, queue: str) -> int:
    channel = conn.default_channel
    return int(channel.queue_declare(queue=queue, passive=True).message_count)


def measure(conn: Connection, queue: str, jobs: int, procs: list[subprocess.Popen[bytes]]) -> float:
    """Jobs per second over the middle 90% of the drain, from the broker's ready count."""
    high, low = jobs * 0.95, jobs * 0.05
    t_high = t_low = None
    deadline = time.monotonic() + 600
    while t_low is None:
        count = ready_count(conn, queue)
        now = time.perf_counter()
        if t_high is None and count <= high:
            t_high = now
        if count <= low:
            t_low = now
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker process exited while draining {queue}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue} not drained in 600 s ({count} left)")
        time.sleep(0.005)
    assert t_high is not None
    return (high - low) / (t_low - t_high)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_uno(processes: int, jobs: int, env: dict[str, str], store: str) -> float:
    from uno_jobs import JobSpec, Queue

    name = f"bench-scale-{uuid.uuid4().hex[:8]}"

    async def fill() -> None:
        queue = Queue(name, broker_url=AMQP, store_url=store)
        try:
            for start in range(0, jobs, 1000):
                count = min(1000, jobs - start)
                await queue.enqueue_many([JobSpec("bench.noop_async") for _ in range(count)])
        finally:
            queue.close()

    asyncio.run(fill())
    command = [
        sys.executable, "-m", "uno_jobs.cli", "--log-level", "WARNING", "worker",
        "--app", "benchmarks.bench_tasks", "--queue", name, "--type", "async",
        "--concurrency", "50", "--broker", AMQP, "--store", store,
    ]  # fmt: skip
    procs = [subprocess.Popen(command, env=env, cwd=ROOT) for _ in range(processes)]
    try:
        with Connection(AMQP) as conn:
            return measure(conn, name, jobs, procs)
    finally:
        stop(procs)

        async def clean() -> None:
            queue = Queue(name, broker_url=AMQP, store_url=store)
            await queue.delete()
            queue.close()

        asyncio.run(clean())


def run_dramatiq(processes: int, jobs: int, env: dict[str, str]) -> float:
    name = f"bench_scale_{uuid.uuid4().hex[:8]}"
    env = {**env, "BENCH_BROKER_URL": AMQP, "BENCH_QUEUE": name}
    env.pop("BENCH_DONE_KEY", None)
    subprocess.run(
        [sys.executable, "-m", "benchmarks.dramatiq_app", str(jobs)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    command = [
        sys.executable, "-m", "dramatiq", "benchmarks.dramatiq_app",
        "-p", str(processes), "-t", "8", "-Q", name,
    ]  # fmt: skip
    procs = [subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)]
    try:
        with Connection(AMQP) as conn:
            return measure(conn, name, jobs, procs)
    finally:
        stop(procs)
        with Connection(AMQP) as conn:
            channel = conn.default_channel
            for queue in (name, f"{name}.DQ", f"{name}.XQ"):
                channel.queue_delete(queue)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    prefix = f"bench-scale-{uuid.uuid4().hex[:6]}:"
    store = f"redis://127.0.0.1:6379/{REDIS_DB}?key_prefix={prefix}"
    rates: dict[tuple[str, int], list[float]] = {}
    print(
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} broker={AMQP} jobs={args.jobs} "
        f"rounds={args.rounds} python={sys.version.split()[0]}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as home:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "UNO_JOBS_HOME": home, "PYTHONPATH": path}
        os.environ["UNO_JOBS_HOME"] = home
        configs = [("uno_jobs", 1), ("uno_jobs", 2), ("dramatiq", 1), ("dramatiq", 2)]
        try:
            for round_no in range(1, args.rounds + 1):
                for system, processes in configs if round_no % 2 else configs[::-1]:
                    if system == "uno_jobs":
                        rate = run_uno(processes, args.jobs, env, store)
                    else:
                        rate = run_dramatiq(processes, args.jobs, env)
                    rates.setdefault((system, processes), []).append(rate)
                    print(
                        f"round {round_no}: {system:>8} x{processes} process(es): "
                        f"{rate:,.0f} jobs/s",
                        flush=True,
                    )
        finally:
            client = redis.Redis(db=REDIS_DB)
            keys = list(client.scan_iter(f"{prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
    verdict = 0
    for system in ("uno_jobs", "dramatiq"):
        one = statistics.median(rates[(system, 1)])
        two = statistics.median(rates[(system, 2)])
        ratio = two / one
        note = ""
        if system == "uno_jobs":
            ok = ratio >= TARGET
            verdict = 0 if ok else 1
            note = f" ({'PASS' if ok else 'FAIL'}: target >= {TARGET})"
        print(
            f"{system}: 1 process {one:,.0f}/s, 2 processes {two:,.0f}/s, ratio {ratio:.2f}{note}"
        )
    print(f"load={os.getloadavg()[0]:.2f}")
    return verdict


if __name__ == "__main__":
    sys.exit(main())
