"""uno_jobs.logs: job fields on records made in a job's context, text and JSON formats."""

from __future__ import annotations

import json
import logging
import threading

from uno_jobs.logs import JobContextFilter, JsonFormatter, TextFormatter, job_context

FIELDS = {"job_id": "j-1", "task": "reports.make", "attempt": 2, "worker_id": "w-1", "queue": "q"}


def make_record(message: str = "hello %s", *args: object) -> logging.LogRecord:
    """A record as a handler with the filter sees it."""
    record = logging.getLogger("test.logs").makeRecord(
        "test.logs", logging.WARNING, __file__, 1, message, args or ("world",), None
    )
    assert JobContextFilter().filter(record)
    return record


def test_records_in_a_job_context_carry_its_fields() -> None:
    outside = make_record()
    assert not hasattr(outside, "job_id")
    with job_context(FIELDS):
        inside = make_record()
        seen: list[logging.LogRecord] = []
        thread = threading.Thread(target=lambda: seen.append(make_record()))
        thread.start()
        thread.join()
    assert {k: getattr(inside, k) for k in FIELDS} == FIELDS
    assert not hasattr(seen[0], "job_id"), "a plain thread does not inherit the context"
    assert not hasattr(make_record(), "job_id")


def test_extra_wins_over_the_context() -> None:
    with job_context(FIELDS):
        record = logging.getLogger("t").makeRecord(
            "t", logging.INFO, __file__, 1, "m", (), None, extra={"job_id": "other"}
        )
        JobContextFilter().filter(record)
    assert record.job_id == "other"
    assert record.task == "reports.make"


def test_text_format_tags_job_lines_only() -> None:
    formatter = TextFormatter("%(levelname)s %(message)s")
    assert formatter.format(make_record()) == "WARNING hello world"
    with job_context(FIELDS):
        line = formatter.format(make_record())
    assert line == "WARNING hello world [job=j-1 task=reports.make attempt=2 worker=w-1]"


def test_json_format() -> None:
    with job_context(FIELDS):
        try:
            raise ValueError("boom")
        except ValueError:
            record = logging.getLogger("t").makeRecord(
                "t", logging.ERROR, __file__, 1, "failed %d", (3,), __import__("sys").exc_info()
            )
            JobContextFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed 3" and entry["level"] == "ERROR"
    assert entry["time"].endswith("Z")
    assert {k: entry[k] for k in FIELDS} == FIELDS
    assert "ValueError: boom" in entry["error"]
