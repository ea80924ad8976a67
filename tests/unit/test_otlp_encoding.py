"""uno_jobs' OTLP span encoding against the SDK's: the same ExportTraceServiceRequest.

Both encodings are decoded with opentelemetry-proto and compared as messages, for spans
covering every field the SDK's ``encode_spans`` fills: each attribute type (and values
the cache keeps apart: ``True`` and ``1``), events, links, statuses, trace state, remote
and local parents, several scopes (with version, attributes and schema URL) and
resources. Then the exporter that sends it, against an HTTP endpoint of the test's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from uno_jobs import _otlp
from uno_jobs._otel_sdk import FastOTLPSpanExporter, HashedResource
from uno_jobs._otlp import encode_spans_request


def _provider(resource: Resource) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _remote_parent(sampled: bool = True, state: TraceState | None = None) -> SpanContext:
    return SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
        trace_state=state or TraceState(),
    )


def _varied_spans() -> list[ReadableSpan]:
    provider, memory = _provider(
        HashedResource.of(Resource({"service.name": "svc", "host.cores": 2}, "https://s/1"))
    )
    other, other_memory = _provider(Resource({"service.name": "other"}))
    tracer = provider.get_tracer("uno_jobs")
    scoped = provider.get_tracer(
        "lib.scope", "1.2.3", schema_url="https://schema/x", attributes={"scope.flag": True}
    )
    remote = _remote_parent(state=TraceState([("vendor", "abc"), ("other", "x-y")]))
    remote_context = set_span_in_context(NonRecordingSpan(remote))

    producer = tracer.start_span(
        "send q",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.message.id": "6f1c2a" * 12,  # longer than what is cached
            "uno_jobs.attempt": 1,
            "flag": True,
            "one": 1,  # equal to True, cached apart from it
            "zero": 0,
            "negative": -5,
            "big": 2**62,
            "ratio": 0.25,
            "nothing_float": 0.0,
            "empty": "",
            "unicode": "żółw ✓",
            "strings": ("a", "b"),
            "ints": [1, 2, 3],
            "floats": (1.5, -2.0),
            "bools": (True, False),
            "empty_seq": (),
        },
    )
    producer.add_event("enqueued", {"size": 3, "where": "here"}, timestamp=1_700_000_000_000)
    producer.add_event("bare")
    producer.set_status(Status(StatusCode.OK))
    producer.end()

    consumer = tracer.start_span(
        "process q",
        context=remote_context,
        kind=SpanKind.CONSUMER,
        links=[
            Link(remote, {"link.reason": "producer", "n": 2}),
            Link(producer.get_span_context()),
        ],
        attributes={"messaging.system": "rabbitmq", "uno_jobs.attempt": 1},
    )
    with_context = set_span_in_context(consumer)
    child = scoped.start_span("task work", context=with_context)
    child.record_exception(ValueError("boom"))
    child.set_status(Status(StatusCode.ERROR, "ValueError: boom"))
    child.end()
    consumer.set_attribute("uno_jobs.outcome", "failed")
    consumer.set_status(Status(StatusCode.ERROR))
    consumer.end()

    for kind in (SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT):
        tracer.start_span(f"kind {kind.name}", kind=kind).end()
    tracer.start_span("", attributes={"messaging.system": "rabbitmq"}).end()
    other.get_tracer("elsewhere").start_span("other resource").end()

    many = tracer.start_span("many", attributes={f"k{n}": n for n in range(130)})
    many.end()
    spans = list(memory.get_finished_spans()) + list(other_memory.get_finished_spans())
    # The SDK's limits leave dropped counts on the span; interleave the resources.
    return spans[:3] + spans[-1:] + spans[3:-1]


def _decoded(data: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    return request


def test_the_request_is_the_sdks_field_for_field() -> None:
    spans = _varied_spans()
    ours = _decoded(encode_spans_request(spans))
    sdk = encode_spans(spans)  # type: ignore[arg-type]
    assert ours == sdk
    assert len(ours.resource_spans) == 2
    first = ours.resource_spans[0]
    assert [len(s.spans) for s in first.scope_spans] == [len(spans) - 2, 1]
    assert any(s.dropped_attributes_count for s in first.scope_spans[0].spans)


def test_a_second_batch_from_the_caches_is_the_same() -> None:
    spans = _varied_spans()
    first = encode_spans_request(spans)
    assert encode_spans_request(spans) == first
    assert _decoded(first) == encode_spans(spans)  # type: ignore[arg-type]


def test_the_attribute_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_otlp, "_ATTRIBUTE_CACHE_SIZE", 8)
    provider, memory = _provider(Resource({"service.name": "svc"}))
    tracer = provider.get_tracer("uno_jobs")
    for n in range(50):
        tracer.start_span("s", attributes={"messaging.message.id": f"id-{n}", "q": "q"}).end()
    spans = list(memory.get_finished_spans())
    assert _decoded(encode_spans_request(spans)) == encode_spans(spans)  # type: ignore[arg-type]
    assert len(_otlp._SPAN_ATTRIBUTES._cache) <= 8


def test_an_empty_batch() -> None:
    assert encode_spans_request([]) == b""
    assert _decoded(b"") == encode_spans([])


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).bodies.append((self.path, body))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"bodies": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_exporter_posts_the_request_to_the_endpoint(
    receiver: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    exporter = FastOTLPSpanExporter()
    assert exporter._fast_client is not None, "this exporter version's client is known"
    spans = _varied_spans()
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    [(path, body)] = handler.bodies
    assert path == "/v1/traces"
    assert _decoded(body) == encode_spans(spans)  # type: ignore[arg-type]
    exporter.shutdown()
    assert exporter.export(spans) == SpanExportResult.FAILURE  # the SDK's answer
    assert len(handler.bodies) == 1


def test_a_refused_batch_is_a_failure(
    receiver: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = receiver
    handler.status = 400  # not retryable
    exporter = FastOTLPSpanExporter(endpoint=f"{url}/v1/traces")
    assert exporter.export(_varied_spans()) == SpanExportResult.FAILURE
    assert len(handler.bodies) == 1


def test_with_its_own_metrics_on_the_sdks_export_runs(
    receiver: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = receiver
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    exporter = FastOTLPSpanExporter(endpoint=f"{url}/v1/traces")
    assert exporter._fast_client is None
    spans = _varied_spans()
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert _decoded(handler.bodies[0][1]) == encode_spans(spans)  # type: ignore[arg-type]
