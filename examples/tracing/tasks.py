"""Tasks of the tracing example: one opens a span of its own, one fails once and retries."""

from __future__ import annotations

import random
import time

from opentelemetry import trace

from uno_jobs import task

tracer = trace.get_tracer("examples.tracing")


@task(name="reports.render", max_retries=2, retry_delay=1)
def render(report_id: int) -> dict[str, int]:
    """Renders a report: its steps show as spans under the worker's ``process`` span."""
    with tracer.start_as_current_span("load data") as span:
        span.set_attribute("report.id", report_id)
        time.sleep(0.02)
    with tracer.start_as_current_span("render"):
        time.sleep(0.01)
        if random.random() < 0.2:
            raise RuntimeError("renderer hiccup (retried: see the second attempt in the trace)")
    return {"report_id": report_id, "pages": 3}
