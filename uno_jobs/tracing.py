"""OpenTelemetry tracing of jobs, after the messaging semantic conventions.

::

    producer: send {queue} (PRODUCER) ─ W3C traceparent/tracestate into the message headers
    worker:   process {queue} (CONSUMER) ─ child of the producer span, with a link to it
                └─ spans the task opens (threads, asyncio, process-pool children)

The library uses the OpenTelemetry API only: without an SDK configured by the application
(see ``configure_sdk``, which the CLI calls), every span is a no-op that costs a few
microseconds. A retry re-sends the message with the same headers, so each attempt's
``process`` span joins the trace of the original ``send``.

The API itself is loaded only when a process could trace: once something imported
``opentelemetry.trace`` (an application installing its SDK, an auto-instrumentation, or
``configure_sdk``), or when ``OTEL_PYTHON_TRACER_PROVIDER`` names a provider for the API
to load. Until then no tracer provider can be set, ``tracing_enabled()`` is ``False``
without loading anything, and a worker that never traces stays 3.4 MiB smaller. The
work is in ``uno_jobs._otel_tracing``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from uno_jobs.config import otlp_traces_configured

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from uno_jobs import _otel_tracing

__all__ = [
    "EMBEDDED_SYSTEM",
    "configure_sdk",
    "consumer_span",
    "current_carrier",
    "extract_context",
    "fail_span",
    "inject_context",
    "messaging_system",
    "producer_span",
    "sdk_configured",
    "shutdown_sdk",
    "tracing_enabled",
    "use_context",
]

#: ``messaging.system`` of uno_jobs' own embedded (SQLite) and in-memory brokers.
EMBEDDED_SYSTEM = "uno_jobs_embedded"

_SYSTEMS = {
    "amqp": "rabbitmq",
    "redis": "redis",
    "sqs": "aws_sqs",
    "embedded": EMBEDDED_SYSTEM,
    "memory": EMBEDDED_SYSTEM,
}
_API_MODULE = "opentelemetry.trace"
#: The API's variable naming a provider it loads on first use (``get_tracer_provider``).
_PROVIDER_VARIABLE = "OTEL_PYTHON_TRACER_PROVIDER"
_IMPLEMENTATION = "uno_jobs._otel_tracing"


def messaging_system(broker_kind: str) -> str:
    """The ``messaging.system`` attribute for a broker kind (``amqp``, ``redis``, ...)."""
    return _SYSTEMS.get(broker_kind, broker_kind)


def tracing_enabled() -> bool:
    """Whether an SDK tracer provider is installed (else spans are skipped altogether).

    Without the API loaded, none can be (see the module's docstring): the answer costs a
    look at ``sys.modules`` and loads nothing.
    """
    if _API_MODULE not in sys.modules and _PROVIDER_VARIABLE not in os.environ:
        return False
    from uno_jobs import _otel_tracing

    return _otel_tracing.tracing_enabled()


def sdk_configured() -> bool:
    """Whether :func:`configure_sdk` installed the SDK in this process."""
    if _IMPLEMENTATION not in sys.modules:
        return False
    from uno_jobs import _otel_tracing

    return _otel_tracing.sdk_configured()


def configure_sdk(service_name: str | None = None) -> bool:
    """Install the OpenTelemetry SDK with an OTLP/HTTP exporter, from the ``OTEL_*`` variables.

    Does nothing (returns ``False``) unless the variables ask for OTLP traces (see
    ``uno_jobs.config.otlp_traces_configured``: an endpoint is set, the SDK is not
    disabled), or when the SDK or the exporter is not installed (``pip install
    'uno-jobs[otel]'``; a warning says so). The exporter reads its endpoint, headers and
    timeouts from the standard variables itself; sampling follows ``OTEL_TRACES_SAMPLER``
    and ``OTEL_TRACES_SAMPLER_ARG``; ``OTEL_SERVICE_NAME`` wins over ``service_name``.
    """
    if not otlp_traces_configured():
        return False
    from uno_jobs import _otel_tracing

    return _otel_tracing.configure_sdk(service_name)


def shutdown_sdk() -> None:
    """Export what is buffered and stop the SDK installed by :func:`configure_sdk`.

    For processes that end without running ``atexit`` handlers (process-pool children
    exit through ``os._exit``); a no-op when :func:`configure_sdk` installed nothing.
    """
    if _IMPLEMENTATION in sys.modules:
        from uno_jobs import _otel_tracing

        _otel_tracing.shutdown_sdk()


def producer_span(
    system: str, queue: str, job_id: str, task: str, headers: MutableMapping[str, Any]
) -> Span:
    """Start the PRODUCER span ``send {queue}`` and put its context into ``headers``.

    The caller ends it (``span.end()``) once the broker has the message, after recording
    an exception with :func:`fail_span` if the publish failed.
    """
    from uno_jobs import _otel_tracing

    return _otel_tracing.producer_span(system, queue, job_id, task, headers)


def fail_span(span: Span, exc: BaseException) -> None:
    """Record ``exc`` on ``span`` and set its status to error."""
    from uno_jobs import _otel_tracing

    _otel_tracing.fail_span(span, exc)


def inject_context(headers: MutableMapping[str, Any], span: Span) -> None:
    """Write the W3C trace context of ``span`` into ``headers`` (``traceparent`` ...)."""
    from uno_jobs import _otel_tracing

    _otel_tracing.inject_context(headers, span)


def extract_context(headers: MutableMapping[str, Any] | dict[str, Any]) -> Context:
    """The context carried by a message's headers (empty when it carries none).

    Headers come from any producer: a malformed ``traceparent`` (not a string, say) gives
    an empty context rather than an error.
    """
    from uno_jobs import _otel_tracing

    return _otel_tracing.extract_context(headers)


def consumer_span(
    system: str,
    queue: str,
    job_id: str,
    task: str,
    attempt: int,
    headers: MutableMapping[str, Any] | dict[str, Any],
) -> _otel_tracing.consumer_span:
    """The CONSUMER span ``process {queue}`` of one execution, as a context manager that
    makes it current while open and gives the span (``_otel_tracing.consumer_span``)."""
    from uno_jobs import _otel_tracing

    return _otel_tracing.consumer_span(system, queue, job_id, task, attempt, headers)


def use_context(carrier: dict[str, str] | None) -> AbstractContextManager[None]:
    """Make the context in ``carrier`` current (used where a task runs: threads, children)."""
    if not carrier:
        return contextlib.nullcontext()
    from uno_jobs import _otel_tracing

    return _otel_tracing.use_context(carrier)


def current_carrier() -> dict[str, str]:
    """The current context as W3C headers, to hand to a thread or a child process."""
    from uno_jobs import _otel_tracing

    return _otel_tracing.current_carrier()
