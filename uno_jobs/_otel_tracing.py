"""The OpenTelemetry side of ``uno_jobs.tracing``: everything that needs the API.

``uno_jobs.tracing`` imports this module the first time a process could trace (the API is
loaded, or ``OTEL_PYTHON_TRACER_PROVIDER`` names a provider), so a process that never
traces does not load OpenTelemetry at all. Callers use ``uno_jobs.tracing``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

log = logging.getLogger("uno_jobs.tracing")

_TRACER_NAME = "uno_jobs"

_sdk_configured = False

#: The provider :func:`configure_sdk` installed, when its sampler is one of the SDK's
#: parent-based ones (``OTEL_TRACES_SAMPLER`` unset or ``parentbased_*``): with it, a
#: remote parent that was not sampled always gives a non-recording span, which
#: :class:`consumer_span` then makes without the SDK (see ``_unsampled_child``).
_parent_decides: object | None = None

#: The global propagator when :func:`configure_sdk` ran, if it was the API's default
#: (``OTEL_PROPAGATORS`` unset or ``tracecontext,baggage``): while it stays, a message
#: whose only trace header is ``traceparent`` is read without it (``_plain_traceparent``).
_default_textmap: object | None = None
_DEFAULT_PROPAGATOR_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})
#: A W3C ``traceparent`` of version 00, exactly as the API's propagator accepts it.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

#: The SDK's samplers (by their ``OTEL_TRACES_SAMPLER`` name) that drop every span whose
#: remote parent was not sampled: ``ParentBased`` with its default
#: ``remote_parent_not_sampled=ALWAYS_OFF``.
_PARENT_BASED_SAMPLERS = frozenset(
    {"parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"}
)


def sdk_configured() -> bool:
    """Whether :func:`configure_sdk` installed the SDK in this process."""
    return _sdk_configured


def tracing_enabled() -> bool:
    """Whether an SDK tracer provider is installed (else spans are skipped altogether)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


_cached: tuple[object, trace.Tracer] | None = None


def _tracer() -> trace.Tracer:
    """uno_jobs' tracer from the current provider (cached while the provider stays).

    The application may install its provider after importing us, so the provider is
    checked on every call; ``get_tracer`` itself costs several microseconds in the SDK.
    """
    global _cached
    provider = trace.get_tracer_provider()
    cached = _cached
    if cached is None or cached[0] is not provider:
        cached = _cached = (provider, provider.get_tracer(_TRACER_NAME))
    return cached[1]


def _base_attributes(system: str, queue: str, job_id: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": system,
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }


def inject_context(headers: MutableMapping[str, Any], span: Span) -> None:
    """Write the W3C trace context of ``span`` into ``headers`` (``traceparent`` ...)."""
    propagate.inject(headers, context=trace.set_span_in_context(span))


class _HeaderGetter(Getter[Any]):
    """Reads message headers for the propagators, as the API's default getter does, but
    without its ``isinstance(value, Iterable)``: an ABC check that cost more than the rest
    of a lookup (a few µs per job, on every job the worker traces)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value]

    def keys(self, carrier: Any) -> list[str]:
        return list(carrier.keys())


_HEADERS = _HeaderGetter()


def extract_context(headers: MutableMapping[str, Any] | dict[str, Any]) -> otel_context.Context:
    """The context carried by a message's headers (empty when it carries none).

    Headers come from any producer: a malformed ``traceparent`` (not a string, say) gives
    an empty context rather than an error.
    """
    try:
        return propagate.extract(headers, getter=_HEADERS)
    except Exception:
        return otel_context.Context()


def producer_span(
    system: str, queue: str, job_id: str, task: str, headers: MutableMapping[str, Any]
) -> Span:
    """Start the PRODUCER span ``send {queue}`` and put its context into ``headers``.

    The caller ends it (``span.end()``) once the broker has the message, after recording
    an exception with :func:`fail_span` if the publish failed.
    """
    attributes = _base_attributes(system, queue, job_id, "send")
    attributes["uno_jobs.task"] = task
    span = _tracer().start_span(f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes)
    inject_context(headers, span)
    return span


def fail_span(span: Span, exc: BaseException) -> None:
    """Record ``exc`` on ``span`` and set its status to error."""
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class consumer_span:
    """The CONSUMER span ``process {queue}`` of one execution, current while it is open.

    Its parent is the producer span found in ``headers`` (when there is one), and it links
    to it too. The caller sets ``uno_jobs.outcome`` and calls :func:`fail_span` on errors;
    the span ends when the block exits. (A class rather than a generator: it is on the
    per-job path.)
    """

    __slots__ = ("_span", "_token")

    def __init__(
        self,
        system: str,
        queue: str,
        job_id: str,
        task: str,
        attempt: int,
        headers: MutableMapping[str, Any] | dict[str, Any],
    ) -> None:
        self._token: object | None = None
        plain = _plain_traceparent(headers) if _default_textmap is not None else None
        if plain is not None:  # read as the propagator would have read it
            trace_id, span_id, flags = plain
            if not flags & TraceFlags.SAMPLED:
                unsampled = _unsampled_child(trace_id, _EMPTY_STATE)
                if unsampled is not None:
                    self._span: Span = unsampled
                    return
            producer = SpanContext(
                trace_id,
                span_id,
                is_remote=True,
                trace_flags=_FLAGS[flags],
                trace_state=_EMPTY_STATE,
            )
            parent = trace.set_span_in_context(NonRecordingSpan(producer), _ROOT)
        else:
            parent = extract_context(headers)
            producer = trace.get_current_span(parent).get_span_context()
            if producer.is_valid and not producer.trace_flags.sampled:
                unsampled = _unsampled_child(producer.trace_id, producer.trace_state)
                if unsampled is not None:
                    self._span = unsampled
                    return
        links = [Link(producer)] if producer.is_valid else None
        attributes = _base_attributes(system, queue, job_id, "process")
        attributes["uno_jobs.task"] = task
        attributes["uno_jobs.attempt"] = attempt
        self._span = _tracer().start_span(
            f"process {queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        self._span.end()


def _plain_traceparent(
    headers: MutableMapping[str, Any] | dict[str, Any],
) -> tuple[int, int, int] | None:
    """Trace id, span id and flags of a message's ``traceparent``, read without the
    propagators (extracting costs about as much as the rest of an unsampled span).

    Only while :func:`configure_sdk`'s default propagator is in place, and only for the
    plain case, where the propagator's context holds the remote span and nothing more: a
    well-formed version-00 ``traceparent``, no ``tracestate`` and no ``baggage``.
    ``None`` otherwise: the caller extracts.
    """
    value = headers.get("traceparent")
    if type(value) is not str or len(value) != 55:
        return None
    if "tracestate" in headers or "baggage" in headers:
        return None
    if propagate.get_global_textmap() is not _default_textmap:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_id = int(match[1], 16)
    span_id = int(match[2], 16)
    if not trace_id or not span_id:  # the propagator rejects all-zero ids
        return None
    return trace_id, span_id, int(match[3], 16)


_EMPTY_STATE = TraceState()
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_FLAGS = [TraceFlags(value) for value in range(256)]
_ROOT = otel_context.Context()


def _unsampled_child(trace_id: int, trace_state: TraceState) -> Span | None:
    """The span the SDK would make under an unsampled remote parent (of this trace id and
    trace state), made without it.

    Only for the provider :func:`configure_sdk` installed with a parent-based sampler,
    which drops such a span for certain: the SDK would then build the attributes, ask the
    sampler and return a ``NonRecordingSpan`` with a new span id, the parent's trace id
    and trace state and no sampled flag (about 11 µs); this is that span for a few µs.
    Spans the task opens under it are dropped as the SDK's would be. ``None``: ask the SDK.
    """
    provider = trace.get_tracer_provider()
    if provider is not _parent_decides:
        return None
    generator: Any = getattr(provider, "id_generator", None)
    if generator is None:
        return None
    context = SpanContext(
        trace_id,
        generator.generate_span_id(),
        is_remote=False,
        trace_flags=_NOT_SAMPLED,
        trace_state=trace_state,
    )
    return NonRecordingSpan(context)


@contextlib.contextmanager
def use_context(carrier: dict[str, str]) -> Iterator[None]:
    """Make the context in ``carrier`` current (``uno_jobs.tracing.use_context``, which
    handles an empty one without loading this module)."""
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def current_carrier() -> dict[str, str]:
    """The current context as W3C headers, to hand to a thread or a child process."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def configure_sdk(service_name: str | None = None) -> bool:
    """The work of ``uno_jobs.tracing.configure_sdk`` (what it does: there), once it has
    found that the variables ask for OTLP traces."""
    global _sdk_configured, _parent_decides, _default_textmap
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from uno_jobs._otel_sdk import FastOTLPSpanExporter, HashedResource
    except ImportError as exc:
        log.warning(
            "an OTLP endpoint is configured but the OpenTelemetry SDK or OTLP exporter is "
            "not installed (%s); install uno-jobs[otel] to export traces",
            exc,
        )
        return False
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    named = str(resource.attributes.get(SERVICE_NAME, ""))
    if service_name and named.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=HashedResource.of(resource))
    provider.add_span_processor(BatchSpanProcessor(FastOTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _sdk_configured = True
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    installed = trace.get_tracer_provider() is provider  # a provider may be set only once
    _parent_decides = provider if installed and sampler in _PARENT_BASED_SAMPLERS else None
    textmap = propagate.get_global_textmap()
    asked = os.environ.get("OTEL_PROPAGATORS", "tracecontext,baggage").replace(" ", "").lower()
    default = asked == "tracecontext,baggage" and textmap.fields == _DEFAULT_PROPAGATOR_FIELDS
    _default_textmap = textmap if default else None
    return True


def shutdown_sdk() -> None:
    """The work of ``uno_jobs.tracing.shutdown_sdk`` (what it does: there)."""
    global _sdk_configured, _parent_decides, _default_textmap
    if not _sdk_configured:
        return
    _sdk_configured = False
    _parent_decides = None
    _default_textmap = None
    provider: Any = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        try:
            shutdown()
        except Exception:
            log.exception("the OpenTelemetry SDK failed to shut down")
