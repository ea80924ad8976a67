"""Enqueue a few traced jobs: the producer side of the tracing example.

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_SERVICE_NAME=report-producer \
        UNO_JOBS_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// python send.py 10

``configure_sdk`` installs the OpenTelemetry SDK with an OTLP/HTTP exporter from the
standard ``OTEL_*`` variables (the CLI does the same); without an endpoint it does nothing
and the jobs are sent untraced.
"""

from __future__ import annotations

import sys

import tasks  # noqa: F401 - registers reports.render

from uno_jobs import Queue
from uno_jobs.tracing import configure_sdk, shutdown_sdk


def main(count: int) -> None:
    traced = configure_sdk("report-producer")
    queue = Queue("reports")
    try:
        for report_id in range(count):
            job = queue.enqueue_sync("reports.render", [report_id])
            print(f"enqueued {job.id}")
    finally:
        queue.close()
        shutdown_sdk()  # export the buffered spans before exiting
    print("traced" if traced else "not traced: set OTEL_EXPORTER_OTLP_ENDPOINT")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
