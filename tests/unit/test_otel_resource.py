"""The resource ``configure_sdk`` gives its provider: the SDK's, with its hash computed once."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from uno_jobs._otel_sdk import HashedResource


def test_same_attributes_equality_and_hash_as_the_sdks() -> None:
    sdk = Resource.create({"service.name": "svc", "deployment.environment": "test"})
    ours = HashedResource.of(sdk)
    assert dict(ours.attributes) == dict(sdk.attributes)
    assert ours.schema_url == sdk.schema_url
    assert ours == sdk and sdk == ours
    assert hash(ours) == hash(sdk)
    assert ours != HashedResource.of(Resource({"service.name": "other"}))
    assert hash(ours) != hash(HashedResource.of(Resource({"service.name": "other"})))


def test_the_attributes_are_serialized_for_the_first_hash_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    computed: list[int] = []
    sdk_hash = Resource.__hash__

    def counting(self: Resource) -> int:
        computed.append(1)
        return sdk_hash(self)

    monkeypatch.setattr(Resource, "__hash__", counting)
    resource = HashedResource.of(Resource({"service.name": "svc"}))
    assert hash(resource) == hash(resource) == hash(resource)
    assert len(computed) == 1


def test_the_encoder_groups_every_span_under_the_one_resource() -> None:
    provider = TracerProvider(resource=HashedResource.of(Resource({"service.name": "svc"})))
    tracer = provider.get_tracer("uno_jobs")
    spans = []
    for n in range(3):
        span = tracer.start_span(f"process q{n}")
        span.end()
        spans.append(span)
    request = encode_spans(spans)  # type: ignore[arg-type]
    assert len(request.resource_spans) == 1
    [resource_spans] = request.resource_spans
    assert [a.key for a in resource_spans.resource.attributes] == ["service.name"]
    names = [s.name for s in resource_spans.scope_spans[0].spans]
    assert names == ["process q0", "process q1", "process q2"]
