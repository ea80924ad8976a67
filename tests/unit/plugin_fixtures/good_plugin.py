"""A well-formed plugin used by the plugin manager tests."""

from uno_jobs import hookimpl
from uno_jobs.middleware import Middleware
from uno_jobs.worker import AsyncWorker


class GoodWorker(AsyncWorker):
    pass


class GoodMiddleware(Middleware):
    pass


class GoodPolicy:
    def next_delay(self, context):
        return 0.0


BOOTED = []


@hookimpl
def uno_jobs_worker_types():
    return {"good": GoodWorker}


@hookimpl
def uno_jobs_middleware():
    return {"good-mw": GoodMiddleware}


@hookimpl
def uno_jobs_retry_policies():
    return {"good-policy": GoodPolicy}


@hookimpl
def uno_jobs_worker_boot(worker):
    BOOTED.append(worker.worker_id)
