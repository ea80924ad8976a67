"""Report tasks, found by a worker through their module path.

The bare ``@task`` registers ``generate_report`` under its module path,
``my_app.tasks.reports.generate_report``: a worker that allows the ``my_app`` prefix
imports this module the first time a job names that path.
"""

from __future__ import annotations

from uno_jobs.tasks import task


@task
async def generate_report(report_type: str, format: str) -> str:
    """Pretend to render a report; returns the file name it would have written."""
    return f"{report_type}-report.{format}"
