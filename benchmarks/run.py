"""Measure uno_jobs against Celery, Dramatiq and raw kombu in one run, and write the report.

::

    .venv/bin/python -m benchmarks.run [--rounds 5] [--jobs 10000]
        [--brokers embedded,redis,amqp] [--systems ...] [--measures ...]
        [--enqueue-jobs 5000] [--latency-jobs 500] [--backlog 100000]
        [--docs docs/benchmarks.md] [--json FILE]

Measures (``--measures``): ``throughput`` (no-op jobs queued before ONE worker starts),
``enqueue`` (single and bulk, confirmed and unconfirmed where a system has both),
``latency`` (enqueue-to-start p50/p99, jobs 5 ms apart, confirms on; the worker's idle
memory is read first) and ``backlog`` (the worker's memory under a backlog). Each round
runs every measure of every system, broker by broker and measure by measure, so a slow
minute on a shared machine hits the systems it compares alike. Prints every figure, the
ratios uno_jobs ÷ each peer and the targets; writes the generated section of
``docs/benchmarks.md`` and ``docs/benchmarks.png``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: import the package ``benchmarks`` from the repository root.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks._brokers import RunNames, delete_amqp, delete_redis
from benchmarks._docs import plot, render_section, splice
from benchmarks._sessions import run_backlog, run_enqueue, run_latency
from benchmarks._systems import RUNNERS, Context
from benchmarks.report import (
    Sample,
    compute_peer_ratios,
    compute_ratios,
    format_table,
    summarize,
    to_json,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = (
    "uno_sync",
    "uno_thread",
    "uno_async",
    "uno_process",
    "kombu",
    "celery",
    "celery_threads",
    "celery_prefork",
    "dramatiq",
)
BROKERS = ("embedded", "redis", "amqp")
MEASURES = ("throughput", "enqueue", "latency", "backlog")
#: The backlog measure's default systems: its target is about the AsyncWorker, and a
#: 100,000-job prefill per Celery pool and uno_jobs worker type would double the run.
BACKLOG_SYSTEMS = ("uno_async", "celery", "dramatiq")
_UNO_ONLY_BROKERS = {"embedded"}

Runner = Callable[[Context, str, str], list[Sample]]
_MEASURE_RUNNERS: dict[str, Runner] = {
    "enqueue": run_enqueue,
    "latency": run_latency,
    "backlog": run_backlog,
}


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"{what}: unknown {unknown or value!r} (allowed: {','.join(allowed)})"
        )
    return items


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--jobs", type=int, default=10_000, help="jobs per throughput measurement")
    add("--peer-jobs", type=int, default=None, help="cap the Celery/Dramatiq throughput jobs")
    add("--rounds", type=int, default=5)
    add("--brokers", type=lambda v: _csv(v, BROKERS, "--brokers"), default=list(BROKERS))
    add("--systems", type=lambda v: _csv(v, SYSTEMS, "--systems"), default=list(SYSTEMS))
    add("--measures", type=lambda v: _csv(v, MEASURES, "--measures"), default=list(MEASURES))
    add("--enqueue-jobs", type=int, default=5_000, help="jobs per way of enqueueing")
    add("--latency-jobs", type=int, default=500, help="latency jobs, sent 5 ms apart")
    add("--idle-seconds", type=float, default=3.0, help="idle time before reading memory")
    add("--backlog", type=int, default=100_000, help="jobs queued for the memory measure")
    add("--backlog-seconds", type=float, default=10.0, help="memory sampled this long")
    add("--backlog-rounds", type=int, default=None, help="rounds with the backlog measure")
    add("--backlog-systems", type=lambda v: _csv(v, SYSTEMS, "--backlog-systems"),
        default=list(BACKLOG_SYSTEMS), help="systems of the backlog measure")  # fmt: skip
    add("--redis-url", default=RunNames.redis_url)
    add("--amqp-url", default=RunNames.amqp_url)
    add("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md",
        help="markdown document whose generated section is replaced ('-': none)")  # fmt: skip
    add("--json", type=Path, default=None, help="write the results as JSON")
    add("--keep-logs", action="store_true", help="keep the subprocess logs")
    args = parser.parse_args(argv)
    counts = (args.jobs, args.rounds, args.enqueue_jobs, args.latency_jobs, args.backlog)
    if min(counts) < 1 or (args.peer_jobs is not None and args.peer_jobs < 1):
        parser.error("--jobs, --peer-jobs, --rounds, --*-jobs and --backlog must be >= 1")
    if args.backlog_rounds is None:
        args.backlog_rounds = args.rounds
    return args


def _applies(measure: str, system: str, broker: str) -> bool:
    if broker in _UNO_ONLY_BROKERS and not system.startswith("uno"):
        return False
    return measure != "backlog" or system != "kombu"


def _enqueue_system(system: str) -> str:
    """Enqueueing does not depend on the worker: one ``uno`` and one ``celery`` entry."""
    if system.startswith("uno"):
        return "uno"
    return "celery" if system.startswith("celery") else system


def plan(brokers: list[str], systems: list[str], measures: list[str]) -> list[tuple[str, str, str]]:
    """The (measure, system, broker) steps of one round: broker by broker, then measure
    by measure, so the systems a measure compares run one after the other."""
    steps: list[tuple[str, str, str]] = []
    for broker in BROKERS:
        if broker not in brokers:
            continue
        for measure in MEASURES:
            if measure not in measures:
                continue
            for system in SYSTEMS:
                if system not in systems or not _applies(measure, system, broker):
                    continue
                if measure == "enqueue":
                    system = _enqueue_system(system)
                step = (measure, system, broker)
                if step not in steps:
                    steps.append(step)
    return steps


def _command_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _server_versions(names: RunNames) -> dict[str, str]:
    out = {}
    try:
        import redis

        client = redis.Redis.from_url(names.redis_url)
        out["Redis server"] = str(client.info("server")["redis_version"])
        client.close()
    except Exception as exc:
        out["Redis server"] = f"unknown ({exc})"
    try:
        from kombu.connection import Connection

        with Connection(names.amqp_url, connect_timeout=5) as conn:  # type: ignore[no-untyped-call]
            conn.connect()
            props = conn.connection.server_properties
            out["RabbitMQ server"] = str(props.get("version", "unknown"))
    except Exception as exc:
        out["RabbitMQ server"] = f"unknown ({exc})"
    return out


def _versions(names: RunNames) -> dict[str, str]:
    sha = _command_version(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _command_version(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "-uno"])
    out = {"uno_jobs git": sha + (" (uncommitted changes)" if dirty != "unknown" else "")}
    out["python"] = platform.python_version()
    for dist in ("uno-jobs", "kombu", "amqp", "redis", "celery", "dramatiq", "pika"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    out.update(_server_versions(names))
    return out


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _summary(samples: list[Sample]) -> str:
    parts = []
    for s in samples:
        if s.value is None:
            parts.append(f"{s.metric} failed")
        elif s.amount is not None:
            parts.append(f"{s.metric} {s.value:,.2f}")
        else:
            parts.append(f"{s.metric} {s.value:,.0f}/s")
    return ", ".join(parts)


def measure(args: argparse.Namespace, names: RunNames, workdir: Path) -> list[Sample]:
    """Run every step of the plan, ``args.rounds`` times, interleaved."""
    ctx = Context(names, args.jobs, args.peer_jobs or args.jobs, workdir, log=_log)
    ctx.enqueue_jobs, ctx.latency_jobs = args.enqueue_jobs, args.latency_jobs
    ctx.idle_seconds, ctx.backlog = args.idle_seconds, args.backlog
    ctx.backlog_seconds = args.backlog_seconds
    samples: list[Sample] = []
    steps = plan(args.brokers, args.systems, args.measures)
    for round_no in range(1, args.rounds + 1):
        ctx.round_no = round_no
        for what, system, broker in steps:
            if what == "backlog" and (
                round_no > args.backlog_rounds or system not in args.backlog_systems
            ):
                continue
            t0 = time.monotonic()
            runner = RUNNERS[system] if what == "throughput" else _MEASURE_RUNNERS[what]
            got = runner(ctx, system, broker)
            samples += got
            if broker == "redis":
                # Job records, queues, done keys: nothing of a step is needed by the next,
                # and 100,000-job backlogs should not pile up in the shared Redis.
                _delete_redis_keys(names)
            took = time.monotonic() - t0
            _log(f"[round {round_no}] {what} {system} on {broker}: {_summary(got)} ({took:.0f} s)")
    return samples


def _delete_redis_keys(names: RunNames) -> None:
    try:
        delete_redis(names.redis_url, names.key_prefix)
    except Exception as exc:
        _log(f"  ! Redis keys under {names.key_prefix!r} not deleted: {exc}")


def clean_up(names: RunNames, brokers: list[str]) -> None:
    """Delete what the run left: its Redis keys and its RabbitMQ queues and exchanges."""
    try:
        deleted = delete_redis(names.redis_url, names.key_prefix)
        _log(f"clean-up: deleted {deleted} Redis key(s) under {names.key_prefix!r}")
    except Exception as exc:
        _log(f"clean-up: Redis keys under {names.key_prefix!r} not deleted: {exc}")
    if "amqp" in brokers and names.amqp_queues:
        try:
            delete_amqp(names.amqp_url, names.amqp_queues, names.amqp_exchanges)
        except Exception as exc:
            _log(f"clean-up: RabbitMQ queues not deleted: {exc}")


def _meta(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    return {
        "command": ".venv/bin/python -m benchmarks.run " + shlex.join(argv),
        "rounds": args.rounds,
        "jobs": args.jobs,
        "peer_jobs": args.peer_jobs or args.jobs,
        "enqueue_jobs": args.enqueue_jobs,
        "latency_jobs": args.latency_jobs,
        "backlog": f"{args.backlog} jobs, {args.backlog_seconds:g} s, "
        f"{min(args.backlog_rounds, args.rounds)} round(s), {'/'.join(args.backlog_systems)}",
        "brokers": ",".join(args.brokers),
        "cpus": os.cpu_count(),
        "load_before": round(os.getloadavg()[0], 2),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 1 if any measurement failed."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    names = RunNames(redis_url=args.redis_url, amqp_url=args.amqp_url)
    workdir = Path(tempfile.mkdtemp(prefix=f"uno-bench-{names.suffix}-"))
    meta = _meta(args, argv)
    _log(f"run {names.suffix}: logs in {workdir}")
    t0 = time.monotonic()
    try:
        samples = measure(args, names, workdir)
    finally:
        clean_up(names, args.brokers)
    meta["minutes"] = round((time.monotonic() - t0) / 60, 1)
    meta["load_after"] = round(os.getloadavg()[0], 2)
    meta["versions"] = _versions(names)
    figures = summarize(samples)
    ratios = compute_ratios(figures)
    peer_ratios = compute_peer_ratios(figures)
    print(format_table(figures, ratios, peer_ratios))
    if args.json:
        args.json.write_text(to_json(samples, figures, ratios, meta, peer_ratios) + "\n")
    if str(args.docs) != "-":
        png = args.docs.with_suffix(".png")
        plotted = plot(figures, png)
        section = render_section(figures, ratios, peer_ratios, meta, png.name if plotted else None)
        old = args.docs.read_text() if args.docs.exists() else "# Benchmarks\n"
        args.docs.write_text(splice(old, section))
        _log(f"wrote {args.docs}" + (f" and {png}" if plotted else " (no matplotlib: no plot)"))
    failed = any(s.value is None for s in samples)
    if failed or args.keep_logs:
        _log(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
