"""Tasks of the OpenTelemetry test (imported by the driver and by process-pool children)."""

from __future__ import annotations

from pathlib import Path

from opentelemetry import trace

from uno_jobs import task


@task(name="traced.work")
def work(n: int) -> int:
    """Opens a span of its own: it must nest under the worker's ``process`` span."""
    with trace.get_tracer("tracing-tasks").start_as_current_span("inside work") as span:
        span.set_attribute("n", n)
        return n * 2


@task(name="traced.flaky", max_retries=1, retry_delay=0)
def flaky(marker: str) -> str:
    """Fails on its first attempt (no marker file yet), succeeds on the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "second attempt"
