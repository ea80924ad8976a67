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
    UnoJobsError,
)

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
    sub = parser.add_subparsers(dest="command", required=True)
    _add_worker_command(sub)
    _add_job_commands(sub)

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
        help="worker type: sync, thread, async, process (and plugin types)",
    )
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
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code = args.func(args)
        return int(code or 0)
    except ConfigurationError as exc:
        print(f"uno-jobs: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokerUnavailableError as exc:
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
    worker = cls(**{k: v for k, v in options.items() if v is not None})
    worker.settings = vars(args)
    return asyncio.run(worker.run())


def _queue(args: argparse.Namespace) -> Any:
    from uno_jobs.queue import Queue

    return Queue(args.queue, broker_url=args.broker, store_url=args.store)


def _enqueue(args: argparse.Namespace) -> int:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
