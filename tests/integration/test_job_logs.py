"""Log lines about a job carry its id, task, attempt and worker id, for every worker type."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import contract_tasks  # noqa: F401 - registers the contract.* tasks
import pytest
from conftest import opened, run, running

from uno_jobs import JobFailedError, task
from uno_jobs.logs import JobContextFilter, JsonFormatter
from uno_jobs.worker._registry import get_worker_type

pytestmark = pytest.mark.integration

task_log = logging.getLogger("tests.job_logs")


@task(name="job_logs.chatty", max_retries=1, retry_delay=0)
def chatty(n: int) -> int:
    task_log.info("working on %d", n)
    raise ValueError(f"bad {n}")


@pytest.mark.parametrize("kind", ["sync", "thread", "async"])
def test_job_lines_carry_the_job_fields(
    kind: str, uno_home: Path, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both uno_jobs' lines and the task's own (in the job's context) carry the fields.

    Process-pool children log in their own process, without the worker's context; the
    worker's lines about their jobs carry the fields as here.
    """

    async def main() -> str:
        async with opened(queue_name, "embedded://") as queue:
            worker = get_worker_type(kind)(
                queue_name=queue.name, broker_url="embedded://", worker_id=f"logs-{kind}"
            )
            async with running(worker):
                job = await queue.enqueue("job_logs.chatty", [7])
                with pytest.raises(JobFailedError):
                    await job.wait(timeout=20)
                return job.id

    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(JobContextFilter())  # as the CLI's handler has it
    job_id = ""

    async def body() -> None:
        nonlocal job_id
        job_id = await main()

    run(body)
    about_job = [r for r in caplog.records if getattr(r, "job_id", None) == job_id]
    task_lines = [r for r in about_job if r.name == "tests.job_logs"]
    assert [(r.getMessage(), r.attempt) for r in task_lines] == [
        ("working on 7", 1),
        ("working on 7", 2),
    ]
    failures = [r for r in about_job if r.name == "uno_jobs.worker" and "failed" in r.getMessage()]
    assert len(failures) == 2
    for record in about_job:
        assert record.task == "job_logs.chatty"
        assert record.worker_id == f"logs-{kind}"
        assert record.attempt in (1, 2)
    entry = json.loads(JsonFormatter().format(failures[-1]))
    assert (entry["job_id"], entry["attempt"], entry["worker_id"]) == (job_id, 2, f"logs-{kind}")
