"""A hook implementation with an argument the specification does not have."""

from uno_jobs import hookimpl


@hookimpl
def uno_jobs_worker_boot(worker, surprise):
    pass
