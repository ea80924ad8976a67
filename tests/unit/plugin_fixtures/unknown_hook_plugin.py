"""Implements a hook that uno_jobs does not specify (a typo)."""

from uno_jobs import hookimpl


@hookimpl
def uno_jobs_worker_typos():
    return {}
