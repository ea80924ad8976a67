"""The ``uno-jobs`` command line.

Exit codes: 0 success; 1 a job failed, or a worker stop forced by its timeout or a second
signal; 2 a configuration or usage error; 3 a worker stopped by ``max_failures``; 4 the
broker or store is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from uno_jobs.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    StoreUnavailableError,
    UnoJobsError,
)
from uno_jobs.logs import configure_logging
from uno_jobs.tracing import configure_sdk

__all__ = ["main"]

log = logging.getLogger("uno_jobs.cli")

_CONTRIBUTION_HOOKS = frozenset(
    {
        "uno_jobs_worker_types",
        "uno_jobs_middleware",
        "uno_jobs_retry_policies",
        "uno_jobs_job_stores",
        "uno_jobs_metrics_exporters",
    }
)


def _json_arg(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"must be a JSON {kind.__name__}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uno-jobs", description="uno_jobs background jobs")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines, or one JSON object per line (job lines carry job_id, task, "
        "attempt, worker_id)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_worker_command(sub)
    _add_job_commands(sub)
    _add_dead_commands(sub)
    _add_cluster_commands(sub)

    from uno_jobs.plugins import get_plugins

    get_plugins().add_cli_commands(sub)
    return parser


def _add_worker_command(sub: argparse._SubParsersAction[Any]) -> None:
    w = sub.add_parser("worker", help="run a worker until SIGINT/SIGTERM")
    w.add_argument(
        "--app",
        "-A",
        action="append",
        default=[],
        metavar="MODULE",
        help="module(s) to import so their @task functions register (repeatable)",
    )
    w.add_argument("--queue", "-Q", default="default")
    w.add_argument(
        "--type",
        "-t",
        default="async",
        dest="worker_type",
        help="worker type: sync, thread, async, process, distributed (and plugin types)",
    )
    w.add_argument("--cluster", default=None, help="cluster id (--type distributed)")
    w.add_argument("--coordinator", default=None, help="coordinator Redis URL (--type distributed)")
    w.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=None,
        help="max_concurrent / max_threads / max_processes of the worker type",
    )
    w.add_argument(
        "--broker",
        default=None,
        help="broker URL (default: $UNO_JOBS_BROKER_URL or the embedded broker)",
    )
    w.add_argument("--store", default=None, help="job store URL")
    w.add_argument("--worker-id", default=None)
    w.add_argument(
        "--allow",
        action="append",
        default=None,
        metavar="PREFIX",
        help="module prefix tasks may be imported from by dotted path "
        "(repeatable; default: the --app modules)",
    )
    w.add_argument(
        "--priority-levels", default=None, help="comma-separated levels to serve (default: all)"
    )
    w.add_argument("--shutdown-timeout", type=float, default=None)
    w.add_argument("--max-failures", type=int, default=None)
    w.add_argument(
        "--middleware",
        action="append",
        default=[],
        metavar="NAME",
        help="middleware by name, from uno_jobs or a plugin (repeatable)",
    )
    w.add_argument(
        "--retry-policy",
        default=None,
        metavar="NAME",
        help="the worker's retry policy (default: fixed)",
    )
    w.add_argument(
        "--metrics-exporter",
        action="append",
        default=[],
        metavar="NAME",
        help="metrics exporter by name, from a plugin (repeatable; see `uno-jobs plugins`)",
    )
    w.add_argument(
        "--probe-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve /livez and /readyz on this port (default: off)",
    )
    w.add_argument(
        "--probe-host",
        default=None,
        metavar="HOST",
        help="address the probes bind to (default: 127.0.0.1)",
    )
    w.add_argument(
        "--celery-results",
        default=None,
        metavar="URL",
        help="also write results where a Celery Redis result backend reads them "
        "(redis://host:6379/1?key_prefix=&expires=; default: off)",
    )
    w.set_defaults(func=_worker)
    from uno_jobs.plugins import get_plugins

    get_plugins().add_worker_options(w)


def _add_job_commands(sub: argparse._SubParsersAction[Any]) -> None:
    e = sub.add_parser("enqueue", help="enqueue one job")
    e.add_argument("task")
    e.add_argument("--args", type=_json_arg(list), default=[], help="JSON list")
    e.add_argument("--kwargs", type=_json_arg(dict), default={}, help="JSON object")
    e.add_argument("--queue", "-Q", default="default")
    e.add_argument("--priority", default=None)
    e.add_argument("--delay", type=float, default=None)
    e.add_argument("--job-id", default=None)
    e.add_argument("--broker", default=None)
    e.add_argument("--store", default=None)
    e.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait for the result and print it",
    )
    e.set_defaults(func=_enqueue)

    j = sub.add_parser("job", help="show a job's record as JSON")
    j.add_argument("job_id")
    j.add_argument("--queue", "-Q", default="default")
    j.add_argument("--broker", default=None)
    j.add_argument("--store", default=None)
    j.set_defaults(func=_job)

    d = sub.add_parser("demo", help="run example jobs on the embedded broker (no server)")
    d.add_argument("--jobs", type=int, default=300)
    d.add_argument("--concurrency", type=int, default=50)
    d.set_defaults(func=_demo)

    p = sub.add_parser("plugins", help="list the loaded plugins and what they contribute")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_plugins)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = _parser()
    except ConfigurationError as exc:  # a broken or conflicting plugin
        print(f"uno-jobs: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    configure_logging(getattr(logging, str(args.log_level).upper(), logging.INFO), args.log_format)
    try:
        code = args.func(args)
        return int(code or 0)
    except ConfigurationError as exc:
        print(f"uno-jobs: configuration error: {exc}", file=sys.stderr)
        return 2
    except (BrokerUnavailableError, StoreUnavailableError) as exc:
        print(f"uno-jobs: {exc}", file=sys.stderr)
        return 4
    except JobNotFoundError as exc:
        print(f"uno-jobs: {exc}", file=sys.stderr)
        return 1
    except UnoJobsError as exc:
        print(f"uno-jobs: {exc}", file=sys.stderr)
        return 1


def _demo(args: argparse.Namespace) -> int:
    from uno_jobs.demo import run_demo

    return asyncio.run(run_demo(args.jobs, args.concurrency))


def _plugins(args: argparse.Namespace) -> int:
    from uno_jobs.plugins import get_plugins

    infos = get_plugins().infos()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2, default=list))
        return 0
    for info in infos:
        kind = "built-in" if info.builtin else "plugin"
        print(f"{info.name}  ({kind}; {info.distribution} {info.version})")
        for what, names in info.contributes.items():
            if names:
                print(f"    {what}: {', '.join(names)}")
        others = [h for h in info.hooks if h not in _CONTRIBUTION_HOOKS]
        if others:
            print(f"    hooks: {', '.join(others)}")
    return 0


def _import_apps(modules: list[str]) -> None:
    sys.path.insert(0, "")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(f"--app {module!r} cannot be imported: {exc}") from None


def _worker(args: argparse.Namespace) -> int:
    from uno_jobs.worker._registry import get_worker_type

    _import_apps(args.app)
    cls = get_worker_type(args.worker_type)
    options: dict[str, Any] = {
        "queue_name": args.queue,
        "broker_url": args.broker,
        "store_url": args.store,
        "worker_id": args.worker_id,
        "allowed_modules": args.allow if args.allow is not None else list(args.app),
    }
    if args.concurrency is not None:
        name = cls.options_model.concurrency_option
        if name is None:
            if args.concurrency != 1:
                raise ConfigurationError(
                    f"--concurrency: worker type {args.worker_type!r} runs one job at a time"
                )
        else:
            options[name] = args.concurrency
    for flag, name in (("cluster", "cluster_id"), ("coordinator", "coordinator_url")):
        if getattr(args, flag) is not None:
            if name not in cls.options_model.model_fields:
                raise ConfigurationError(f"--{flag}: only for --type distributed")
            options[name] = getattr(args, flag)
    if args.priority_levels:
        options["priority_levels"] = [p.strip() for p in args.priority_levels.split(",")]
    if args.shutdown_timeout is not None:
        options["shutdown_timeout"] = args.shutdown_timeout
    if args.max_failures is not None:
        options["max_failures"] = args.max_failures
    if args.middleware:
        options["middleware"] = list(args.middleware)
    if args.retry_policy is not None:
        options["retry_policy"] = args.retry_policy
    if args.metrics_exporter:
        options["metrics_exporters"] = list(args.metrics_exporter)
    if args.probe_port is not None:
        options["probe_port"] = args.probe_port
    if args.probe_host is not None:
        options["probe_host"] = args.probe_host
    if args.celery_results is not None:
        options["celery_results_url"] = args.celery_results
    # Traces go to the OTLP endpoint of the OTEL_* variables, when one is set.
    configure_sdk(service_name="uno-jobs-worker")
    worker = cls(**{k: v for k, v in options.items() if v is not None})
    worker.settings = vars(args)
    return asyncio.run(worker.run())


def _queue(args: argparse.Namespace) -> Any:
    from uno_jobs.queue import Queue

    return Queue(args.queue, broker_url=args.broker, store_url=args.store)


def _enqueue(args: argparse.Namespace) -> int:
    configure_sdk(service_name="uno-jobs")
    queue = _queue(args)
    try:
        handle = queue.enqueue_sync(
            args.task,
            args.args,
            args.kwargs,
            priority=args.priority,
            delay=args.delay,
            job_id=args.job_id,
        )
        print(handle.id)
        if args.wait is not None:
            try:
                result = handle.wait_sync(timeout=args.wait)
            except (JobFailedError, JobTimeoutError) as exc:
                print(f"uno-jobs: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(result))
    finally:
        queue.close()
    return 0


def _job(args: argparse.Namespace) -> int:
    queue = _queue(args)
    try:
        record = queue.get_job_sync(args.job_id)
    finally:
        queue.close()
    print(json.dumps(record.to_dict(), indent=2, default=str))
    return 0


# -- dead letters ---------------------------------------------------------------------------


def _add_dead_commands(sub: argparse._SubParsersAction[Any]) -> None:
    dead = sub.add_parser(
        "dead",
        help="list, requeue or purge dead letters",
        description="Dead letters: jobs that could not run, kept on the broker queue "
        "Q.dead and indexed in the job store for the retention "
        "($UNO_JOBS_RETENTION_SECONDS, default 7 days).",
    )
    actions = dead.add_subparsers(dest="dead_command", required=True)

    ls = actions.add_parser("list", help="list dead letters, newest first (from the store)")
    ls.add_argument("--queue", "-Q", default=None, help="one queue (default: every queue)")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="print JSON")

    rq = actions.add_parser(
        "requeue",
        help="put dead letters back on their queue (same id, attempts reset)",
        description="Move dead letters from Q.dead back to the queue of their priority, "
        "with the same id; the job's record is queued again with attempts 0. Exits 1 if "
        "an id was not on Q.dead.",
    )
    which = rq.add_mutually_exclusive_group(required=True)
    which.add_argument("job_ids", nargs="*", default=[], metavar="ID", help="job ids")
    which.add_argument("--all", action="store_true", help="every dead letter of the queue")
    rq.add_argument(
        "--queue",
        "-Q",
        default=None,
        help="the queue (default: each id's own queue; with --all: 'default')",
    )

    pg = actions.add_parser("purge", help="delete dead letters from Q.dead and the store")
    pg.add_argument("--queue", "-Q", default="default")
    pg.add_argument(
        "--expired",
        action="store_true",
        help="only those older than the retention (index entries of every queue)",
    )

    for parser in (ls, rq, pg):
        parser.add_argument("--broker", default=None)
        parser.add_argument("--store", default=None)
    ls.set_defaults(func=_dead_list)
    rq.set_defaults(func=_dead_requeue)
    pg.set_defaults(func=_dead_purge)


def _dead_list(args: argparse.Namespace) -> int:
    from uno_jobs.message import iso_from_timestamp

    if args.limit < 0:
        raise ConfigurationError(f"--limit must be >= 0, got {args.limit}")
    queue = _named_queue(args, args.queue or "default")
    try:
        entries = queue.dead_letters_sync(args.limit, every_queue=args.queue is None)
    finally:
        queue.close()
    rows = [
        {
            "id": entry.job_id,
            "task": entry.task,
            "queue": entry.queue,
            "reason": entry.reason,
            "error": entry.error,
            "dead_at": iso_from_timestamp(entry.dead_at),
        }
        for entry in entries
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no dead letters", file=sys.stderr)
        return 0
    names = ("id", "task", "queue", "reason", "dead_at")
    widths = {name: max(len(name), *(len(row[name]) for row in rows)) for name in names}
    print("  ".join(name.upper().ljust(widths[name]) for name in names) + "  ERROR")
    for row in rows:
        error = " ".join(str(row["error"] or "").split())
        cells = "  ".join(str(row[name]).ljust(widths[name]) for name in names)
        print(f"{cells}  {error[:200]}")
    return 0


def _dead_requeue(args: argparse.Namespace) -> int:
    if args.all:
        queue = _named_queue(args, args.queue or "default")
        try:
            moved = queue.requeue_dead_sync()
        finally:
            queue.close()
        for job_id in moved:
            print(job_id)
        print(f"requeued {len(moved)} job(s) on {queue.name}", file=sys.stderr)
        return 0
    by_queue = _ids_by_queue(args)
    missing: list[tuple[str, str]] = []
    for name, ids in by_queue.items():
        queue = _named_queue(args, name)
        try:
            moved = set(queue.requeue_dead_sync(ids))
        finally:
            queue.close()
        for job_id in ids:
            if job_id in moved:
                print(job_id)
            else:
                missing.append((job_id, name))
    for job_id, name in missing:
        print(f"uno-jobs: job {job_id!r} is not on {name}.dead", file=sys.stderr)
    return 1 if missing else 0


def _ids_by_queue(args: argparse.Namespace) -> dict[str, list[str]]:
    """The ids to requeue per queue: ``--queue``, else each job record's own queue."""
    ids = list(dict.fromkeys(args.job_ids))
    if args.queue is not None:
        return {args.queue: ids}
    lookup = _named_queue(args, "default")
    try:
        by_queue: dict[str, list[str]] = {}
        for job_id in ids:
            record = lookup.store.get(job_id)
            by_queue.setdefault(record.queue if record else "default", []).append(job_id)
        return by_queue
    finally:
        lookup.close()


def _dead_purge(args: argparse.Namespace) -> int:
    queue = _named_queue(args, args.queue)
    try:
        removed = queue.purge_dead_sync(expired=args.expired)
    finally:
        queue.close()
    what = "expired dead letter(s)" if args.expired else "dead letter(s)"
    print(f"purged {removed} {what} from {queue.name}.dead", file=sys.stderr)
    return 0


def _named_queue(args: argparse.Namespace, name: str) -> Any:
    from uno_jobs.queue import Queue

    return Queue(name, broker_url=args.broker, store_url=args.store)


# -- cluster ----------------------------------------------------------------------------------


def _add_cluster_commands(sub: argparse._SubParsersAction[Any]) -> None:
    cluster = sub.add_parser(
        "cluster",
        help="show a cluster's workers; pause, resume or shut them down",
        description="A cluster of workers coordinated over Redis (WorkerCoordinator, "
        "DistributedWorker). The coordinator is --coordinator, else "
        "$UNO_JOBS_COORDINATOR_URL, else the broker's URL when it is Redis.",
    )
    actions = cluster.add_subparsers(dest="cluster_command", required=True)
    st = actions.add_parser("status", help="a table of the cluster's workers")
    st.add_argument("--dead", action="store_true", help="also list dead workers not yet swept")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_cluster_status)
    for action, text in (
        ("pause", "stop taking jobs (running ones finish)"),
        ("resume", "take jobs again after a pause"),
        ("shutdown", "graceful shutdown"),
    ):
        cmd = actions.add_parser(
            action,
            help=f"{text}: one worker, or every worker",
            description=f"{text.capitalize()}: the desired state is kept in Redis and each "
            "worker obeys at its next heartbeat (at once when the wake-up reaches it).",
        )
        cmd.add_argument("worker", nargs="?", default=None, help="worker id (default: all)")
        cmd.set_defaults(func=_cluster_command, action=action)
    for parser in (st, *(actions.choices[a] for a in ("pause", "resume", "shutdown"))):
        parser.add_argument("--cluster", "-C", default="default", help="cluster id")
        parser.add_argument("--coordinator", default=None, help="coordinator Redis URL")
        parser.add_argument("--broker", default=None, help=argparse.SUPPRESS)


def _coordinator(args: argparse.Namespace) -> Any:
    from uno_jobs.config import resolve_broker_url, resolve_coordinator_url
    from uno_jobs.coordination import WorkerCoordinator

    url = resolve_coordinator_url(args.coordinator, resolve_broker_url(args.broker))
    return WorkerCoordinator(url, args.cluster)


def _cluster_status(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import time

    async def fetch() -> tuple[list[Any], Any]:
        coordinator = _coordinator(args)
        try:
            return await coordinator.members(include_dead=args.dead), await coordinator.leader()
        finally:
            await coordinator.stop()

    members, leader = asyncio.run(fetch())
    if args.json:
        rows = [dataclasses.asdict(m) for m in members]
        print(json.dumps({"cluster": args.cluster, "leader": leader, "workers": rows}, indent=2))
        return 0
    if not members:
        print(f"no workers in cluster {args.cluster!r}", file=sys.stderr)
        return 0
    now = time.time()
    header = ("WORKER", "STATE", "TYPE", "QUEUE", "HOST", "PID", "JOBS", "HEARTBEAT", "LEADER")
    table = [header] + [
        (
            m.worker_id,
            m.state,
            m.type,
            m.queue,
            m.host,
            str(m.pid),
            str(m.current_jobs),
            f"{max(0.0, now - m.last_heartbeat):.1f}s ago",
            "*" if m.leader else "",
        )
        for m in members
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if leader is not None:
        print(f"leader: node {leader[1]} (fencing token {leader[0]})", file=sys.stderr)
    return 0


def _cluster_command(args: argparse.Namespace) -> int:
    import asyncio

    async def send() -> int | None:
        coordinator = _coordinator(args)
        try:
            if args.worker is not None:
                ids = {m.worker_id for m in await coordinator.members()}
                if args.worker not in ids:
                    return None
            return int(await coordinator.send(args.action, args.worker))
        finally:
            await coordinator.stop()

    seq = asyncio.run(send())
    if seq is None:
        print(
            f"uno-jobs: no live worker {args.worker!r} in cluster {args.cluster!r}",
            file=sys.stderr,
        )
        return 1
    target = f"worker {args.worker}" if args.worker else "every worker"
    print(f"{args.action} sent to {target} of cluster {args.cluster} (command {seq})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
