"""Tasks, and things that are not tasks, for the resolver tests."""

import os

from uno_jobs.tasks import task

from . import REGISTRY

__all__ = ["ANSWER", "NotATask", "add", "generate_report", "helper", "make_summary", "os"]

ANSWER = 42


@task(name="generate_report", max_retries=3, retry_delay=60, timeout=300, registry=REGISTRY)
async def generate_report(report_type: str, format: str) -> str:
    """Spec example: registered under a short name, found by module path too."""
    return f"{report_type}.{format}"


@task(registry=REGISTRY)
def add(a: int, b: int) -> int:
    """Registered under its module path."""
    return a + b


@task(name="build_summary", registry=REGISTRY)
def make_summary() -> str:
    """Registered under a name that is not its attribute name."""
    return "summary"


def helper() -> str:
    """A plain function: never a task."""
    return os.sep


class NotATask:
    """A class: never a task."""
