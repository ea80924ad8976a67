"""Measure uno_jobs against raw kombu, Celery and Dramatiq in one run.

::

    .venv/bin/python benchmarks/run.py [--jobs 10000] [--rounds 1]
        [--brokers embedded,redis,amqp]
        [--systems uno_sync,uno_thread,uno_async,uno_process,kombu,celery,dramatiq]
        [--json FILE] [--markdown FILE]

Prints a table of every rate (medians over the rounds), then the ratios that matter, each
computed from figures of this run. With ``--rounds N`` the systems are interleaved round by
round, so a slow minute on a shared machine hits every system alike. See README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: import the package ``benchmarks`` from the repository root.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks._brokers import RunNames, delete_amqp, delete_redis
from benchmarks._systems import RUNNERS, Context
from benchmarks.report import (
    Sample,
    compute_ratios,
    format_markdown,
    format_table,
    summarize,
    to_json,
)

SYSTEMS = ("uno_sync", "uno_thread", "uno_async", "uno_process", "kombu", "celery", "dramatiq")
BROKERS = ("embedded", "redis", "amqp")
_UNO_ONLY_BROKERS = {"embedded"}


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
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per measurement")
    parser.add_argument(
        "--peer-jobs", type=int, default=None, help="cap the Celery/Dramatiq job count"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--brokers", type=lambda v: _csv(v, BROKERS, "--brokers"), default=list(BROKERS)
    )
    parser.add_argument(
        "--systems", type=lambda v: _csv(v, SYSTEMS, "--systems"), default=list(SYSTEMS)
    )
    parser.add_argument("--redis-url", default=RunNames.redis_url)
    parser.add_argument("--amqp-url", default=RunNames.amqp_url)
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="write a markdown table")
    parser.add_argument("--keep-logs", action="store_true", help="keep the subprocess logs")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.rounds < 1 or (args.peer_jobs is not None and args.peer_jobs < 1):
        parser.error("--jobs, --peer-jobs and --rounds must be >= 1")
    return args


def plan(brokers: list[str], systems: list[str]) -> list[tuple[str, str]]:
    """The (system, broker) pairs of one round, broker by broker, in ``SYSTEMS`` order."""
    return [
        (system, broker)
        for broker in BROKERS
        if broker in brokers
        for system in SYSTEMS
        if system in systems and (broker not in _UNO_ONLY_BROKERS or system.startswith("uno"))
    ]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("uno-jobs", "kombu", "celery", "dramatiq", "redis", "amqp", "pika"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, names: RunNames, workdir: Path) -> list[Sample]:
    """Run every (system, broker) of the plan, ``args.rounds`` times, interleaved."""
    ctx = Context(names, args.jobs, args.peer_jobs or args.jobs, workdir, log=_log)
    samples: list[Sample] = []
    steps = plan(args.brokers, args.systems)
    for round_no in range(1, args.rounds + 1):
        ctx.round_no = round_no
        for system, broker in steps:
            t0 = time.monotonic()
            got = RUNNERS[system](ctx, system, broker)
            samples += got
            rates = ", ".join(
                f"{s.metric} {s.rate:,.0f}/s" if s.rate else f"{s.metric} failed" for s in got
            )
            took = time.monotonic() - t0
            _log(f"[round {round_no}] {system} on {broker}: {rates} ({took:.0f} s)")
    return samples


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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 1 if any measurement failed."""
    args = parse_args(argv)
    names = RunNames(redis_url=args.redis_url, amqp_url=args.amqp_url)
    workdir = Path(tempfile.mkdtemp(prefix=f"uno-bench-{names.suffix}-"))
    meta: dict[str, Any] = {
        "jobs": args.jobs,
        "peer_jobs": args.peer_jobs or args.jobs,
        "rounds": args.rounds,
        "brokers": ",".join(args.brokers),
        "cpus": os.cpu_count(),
        "load_before": round(os.getloadavg()[0], 2),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _log(f"run {names.suffix}: logs in {workdir}")
    try:
        samples = measure(args, names, workdir)
    finally:
        clean_up(names, args.brokers)
    meta["load_after"] = round(os.getloadavg()[0], 2)
    meta.update(_versions())
    figures = summarize(samples)
    ratios = compute_ratios(figures)
    print(format_table(figures, ratios))
    if args.json:
        args.json.write_text(to_json(samples, figures, ratios, meta) + "\n")
    if args.markdown:
        args.markdown.write_text(format_markdown(figures, ratios, meta))
    failed = any(s.rate is None for s in samples)
    if failed or args.keep_logs:
        _log(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
