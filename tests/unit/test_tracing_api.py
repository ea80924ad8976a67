"""uno_jobs.tracing against the OpenTelemetry SDK's in-memory exporter (no broker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from uno_jobs import _otel_tracing, tracing

_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    # The global provider can be set once per process; the module looks it up per call.
    monkeypatch.setattr(_otel_tracing, "_tracer", lambda: _provider.get_tracer("uno_jobs"))
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def test_messaging_system_names() -> None:
    assert tracing.messaging_system("amqp") == "rabbitmq"
    assert tracing.messaging_system("sqs") == "aws_sqs"
    assert tracing.messaging_system("redis") == "redis"
    assert tracing.messaging_system("embedded") == tracing.EMBEDDED_SYSTEM


def test_producer_span_injects_w3c_context(spans: InMemorySpanExporter) -> None:
    headers: dict[str, Any] = {}
    span = tracing.producer_span("rabbitmq", "reports", "job-1", "make_report", headers)
    span.end()
    (finished,) = spans.get_finished_spans()
    assert finished.name == "send reports"
    assert finished.kind == SpanKind.PRODUCER
    assert finished.attributes is not None
    assert finished.attributes["messaging.system"] == "rabbitmq"
    assert finished.attributes["messaging.destination.name"] == "reports"
    assert finished.attributes["messaging.message.id"] == "job-1"
    assert finished.attributes["messaging.operation.type"] == "send"
    trace_id = format(finished.context.trace_id, "032x")
    span_id = format(finished.context.span_id, "016x")
    version, carried_trace, carried_span, flags = headers["traceparent"].split("-")
    assert (version, carried_trace, carried_span) == ("00", trace_id, span_id)
    assert int(flags, 16) & 1  # sampled


def test_consumer_span_is_child_of_and_links_to_the_producer(
    spans: InMemorySpanExporter,
) -> None:
    headers: dict[str, Any] = {"other": 1}
    tracing.producer_span("redis", "q", "job-2", "t", headers).end()
    with tracing.consumer_span("redis", "q", "job-2", "t", 2, headers) as span:
        assert trace.get_current_span() is span
        with _provider.get_tracer("user").start_as_current_span("inside the task"):
            pass
    producer, inner, consumer = sorted(
        spans.get_finished_spans(), key=lambda s: (s.kind != SpanKind.PRODUCER, s.name)
    )
    assert consumer.name == "process q" and consumer.kind == SpanKind.CONSUMER
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.context.trace_id == producer.context.trace_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    assert consumer.attributes is not None
    assert consumer.attributes["uno_jobs.attempt"] == 2
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert inner.parent is not None and inner.parent.span_id == consumer.context.span_id


def test_consumer_span_without_producer_context_starts_a_trace(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.consumer_span("rabbitmq", "q", "celery-job", "t", 1, {}):
        pass
    (consumer,) = spans.get_finished_spans()
    assert consumer.parent is None
    assert list(consumer.links) == []


def test_fail_span_records_the_exception(spans: InMemorySpanExporter) -> None:
    with tracing.consumer_span("redis", "q", "j", "t", 1, {}) as span:
        tracing.fail_span(span, ValueError("boom"))
    (finished,) = spans.get_finished_spans()
    assert finished.status.status_code == StatusCode.ERROR
    assert [e.name for e in finished.events] == ["exception"]


def test_carrier_round_trip_for_threads_and_children(spans: InMemorySpanExporter) -> None:
    with tracing.consumer_span("redis", "q", "j", "t", 1, {}) as span:
        carrier = tracing.current_carrier()
    assert carrier["traceparent"].split("-")[2] == format(span.get_span_context().span_id, "016x")
    with tracing.use_context(carrier):
        current = trace.get_current_span().get_span_context()
        assert current.span_id == span.get_span_context().span_id
    assert not trace.get_current_span().get_span_context().is_valid
    with tracing.use_context(None):
        assert not trace.get_current_span().get_span_context().is_valid


def test_configure_sdk_needs_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.configure_sdk("svc") is False
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure_sdk("svc") is False


def test_malformed_trace_headers_start_a_new_trace(spans: InMemorySpanExporter) -> None:
    for headers in ({"traceparent": 12345}, {"traceparent": ["x", None]}, {"tracestate": {}}):
        with tracing.consumer_span("redis", "q", "j", "t", 1, headers):
            pass
    assert [s.parent for s in spans.get_finished_spans()] == [None, None, None]


def test_tracer_is_cached_per_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_otel_tracing, "_cached", None)
    first = _otel_tracing._tracer()
    assert _otel_tracing._tracer() is first


def test_trace_headers_are_read_as_the_api_default_getter_reads_them() -> None:
    """``extract_context``'s getter (no ABC check) gives what the API's default gives."""
    from opentelemetry import context as otel_context
    from opentelemetry import propagate

    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    cases: list[dict[str, Any]] = [
        {"traceparent": traceparent, "tracestate": "k=v", "baggage": "user=1"},
        {"traceparent": [traceparent], "tracestate": ("a=1", "b=2")},
        {"traceparent": traceparent.encode()},
        {"traceparent": 12345},
        {},
    ]
    for headers in cases:
        ours = tracing.extract_context(headers)
        try:
            theirs = propagate.extract(headers)
        except Exception:  # extract_context turns a failure into an empty context
            theirs = otel_context.Context()
        assert (
            trace.get_current_span(ours).get_span_context()
            == trace.get_current_span(theirs).get_span_context()
        ), headers
        assert dict(ours).keys() == dict(theirs).keys(), headers
