"""Contributes a worker type named like a built-in one."""

from uno_jobs import hookimpl
from uno_jobs.worker import AsyncWorker


class Clash(AsyncWorker):
    pass


@hookimpl
def uno_jobs_worker_types():
    return {"async": Clash}
