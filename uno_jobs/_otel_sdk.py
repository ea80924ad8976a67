"""Pieces of the OpenTelemetry SDK set-up that need the SDK itself (``configure_sdk`` only).

Imported by :func:`uno_jobs.tracing.configure_sdk` once it knows the SDK is installed;
nothing else imports it, so the library keeps to the API when there is no SDK.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from uno_jobs._otlp import encode_spans_request

__all__ = ["FastOTLPSpanExporter", "HashedResource"]

log = logging.getLogger("uno_jobs.tracing")


class HashedResource(Resource):
    """A :class:`Resource` that computes its hash once.

    The OTLP encoders group every exported span by its resource, hashing the resource once
    per span; the SDK's ``Resource.__hash__`` serializes all the attributes to JSON each
    time (several microseconds, in the export thread, holding the GIL). A resource is
    immutable (its attributes refuse changes), so the first hash holds for its lifetime;
    equality stays the SDK's (attributes and schema URL), and so does the hash value.
    """

    _hash: int | None = None

    @classmethod
    def of(cls, resource: Resource) -> HashedResource:
        """The same attributes and schema URL, hashed once."""
        return cls(resource.attributes, resource.schema_url)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = super().__hash__()
        return self._hash


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, with the batch encoded by :mod:`uno_jobs._otlp`.

    Everything but the encoding stays the SDK's: the endpoint, headers, timeout,
    compression and TLS from the ``OTEL_EXPORTER_OTLP_*`` variables, the HTTP client with
    its retries, shutdown. The bytes sent are the ``ExportTraceServiceRequest`` the SDK's
    ``encode_spans`` would make (field for field; the tests compare them), written in a
    fraction of its time. Where this exporter version's HTTP client is not the one known
    here (other versions of opentelemetry-exporter-otlp-proto-http), or the exporter's
    own metrics are switched on, every batch goes through the SDK's ``export`` unchanged.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        client = getattr(self, "_client", None)
        internal_metrics = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "")
        usable = callable(getattr(client, "export", None)) and hasattr(self, "_shutdown")
        self._fast_client: Any = (
            client if usable and internal_metrics.strip().lower() != "true" else None
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = self._fast_client
        if client is None or self._shutdown:
            result: SpanExportResult = super().export(spans)
            return result
        try:
            data = encode_spans_request(spans)
        except Exception:
            log.exception("failed to encode a batch of %d spans", len(spans))
            return SpanExportResult.FAILURE
        limit = getattr(self, "_max_request_size", 0)
        if isinstance(limit, int) and 0 < limit < len(data):
            log.warning(
                "dropping a batch of %d spans: %d bytes serialized, over max_request_size %d",
                len(spans),
                len(data),
                limit,
            )
            return SpanExportResult.FAILURE
        sent = client.export(data)
        return (
            SpanExportResult.SUCCESS
            if getattr(sent, "success", False)
            else SpanExportResult.FAILURE
        )
