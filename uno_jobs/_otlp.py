"""OTLP protobuf encoding of finished spans, written for the export thread's budget.

The SDK's OTLP exporters build a tree of protobuf message objects for every batch and
then serialize it: about 40 µs per span here, in the BatchSpanProcessor's thread, holding
the GIL the worker's event loop needs. This module writes the same
``ExportTraceServiceRequest`` bytes directly (proto3 wire format: varints, fixed64
times, length-delimited messages), caching what repeats from span to span: a resource's
and a scope's encodings, attribute keys, and whole attributes whose value is short.

It encodes exactly what ``opentelemetry-exporter-otlp-proto-common``'s ``encode_spans``
encodes, field for field (the unit tests decode both with opentelemetry-proto and compare
them); :class:`uno_jobs._otel_sdk.FastOTLPSpanExporter` sends it. Duck-typed on the SDK's
``ReadableSpan``: nothing here imports the SDK.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["encode_spans_request"]

log = logging.getLogger("uno_jobs.tracing")

_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_TIMES = struct.Struct("<BQBQ").pack  # Span fields 7 and 8, both fixed64
_SMALL = [bytes((n,)) for n in range(128)]

# Span.kind: the SDK's SpanKind values (INTERNAL=0 ... CONSUMER=4) are one below OTLP's.
_KIND = [b"\x30" + _SMALL[value + 1] for value in range(5)]
# Span.flags (field 16, fixed32): the parent's "is remote" bit is known (0x100), and set
# when the parent is remote (0x200).
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x300)
_LINK_FLAGS_LOCAL = b"\x35" + struct.pack("<I", 0x100)
_LINK_FLAGS_REMOTE = b"\x35" + struct.pack("<I", 0x300)
_EMPTY_STATUS = b"\x7a\x00"
_EMPTY_SCOPE = b"\x0a\x00"

#: Whole encoded attributes (tag included) by (key, value), for values that repeat from
#: span to span (queue, task, system ...); cleared when full, so unique values (job ids)
#: cannot make it grow.
_ATTRIBUTE_CACHE_SIZE = 4096
_CACHEABLE_LENGTH = 64


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    return tag + _varint(len(payload)) + payload


def _value(value: Any) -> bytes:
    """An ``AnyValue`` message (its oneof is always written, zero values included)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _value(item)) for item in value]))
    if isinstance(value, Mapping):
        pairs = [_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()]
        return _field(b"\x32", b"".join(pairs))
    raise TypeError(f"invalid type {type(value).__name__} of value {value!r}")


def _key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _value(value))


class _Attributes:
    """Encodes attribute mappings as repeated ``KeyValue`` fields under one tag."""

    __slots__ = ("_cache", "_tag")

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        self._cache: dict[tuple[str, Any, type], bytes] = {}

    def encode(self, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        cache = self._cache
        tag = self._tag
        parts = []
        for key, value in attributes.items():
            kind = type(value)
            cacheable = (kind is str and len(value) <= _CACHEABLE_LENGTH) or kind in (bool, int)
            if cacheable:
                cached = cache.get((key, value, kind))
                if cached is not None:
                    parts.append(cached)
                    continue
            try:
                encoded = _field(tag, _key_value(key, value))
            except Exception as exc:  # as the SDK's encoder: skip the attribute, say so
                log.error("failed to encode the span attribute %s: %s", key, exc)
                continue
            if cacheable:
                if len(cache) >= _ATTRIBUTE_CACHE_SIZE:
                    cache.clear()
                cache[(key, value, kind)] = encoded
            parts.append(encoded)
        return b"".join(parts)


_SPAN_ATTRIBUTES = _Attributes(b"\x4a")  # Span.attributes = 9
_EVENT_ATTRIBUTES = _Attributes(b"\x1a")  # Event.attributes = 3
_LINK_ATTRIBUTES = _Attributes(b"\x22")  # Link.attributes = 4
_RESOURCE_ATTRIBUTES = _Attributes(b"\x0a")  # Resource.attributes = 1
_SCOPE_ATTRIBUTES = _Attributes(b"\x1a")  # InstrumentationScope.attributes = 3


def _trace_state(trace_state: Any) -> bytes:
    if trace_state is None or not len(trace_state):
        return b""
    text = ",".join([f"{key}={value}" for key, value in trace_state.items()])
    return _field(b"\x1a", text.encode())


def _events(events: Sequence[Any]) -> bytes:
    parts = []
    for event in events:
        body = b""
        if event.timestamp:
            body += b"\x09" + _FIXED64(event.timestamp)
        if event.name:
            body += _field(b"\x12", event.name.encode())
        body += _EVENT_ATTRIBUTES.encode(event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(b"\x5a", body))  # Span.events = 11
    return b"".join(parts)


def _links(links: Sequence[Any]) -> bytes:
    parts = []
    for link in links:
        context = link.context
        body = (
            b"\x0a\x10"
            + context.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + context.span_id.to_bytes(8, "big")
            + _LINK_ATTRIBUTES.encode(link.attributes)
        )
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        body += _LINK_FLAGS_REMOTE if context.is_remote else _LINK_FLAGS_LOCAL
        parts.append(_field(b"\x6a", body))  # Span.links = 13
    return b"".join(parts)


def _status(status: Any) -> bytes:
    if status is None:
        return b""
    body = b""
    if status.description:
        body += _field(b"\x12", status.description.encode())
    code = status.status_code.value
    if code:
        body += b"\x18" + _varint(code)
    return _field(b"\x7a", body) if body else _EMPTY_STATUS


def _span(span: Any) -> bytes:
    """One ``Span`` field (tag 2 of ``ScopeSpans``), as the SDK encoder fills it."""
    context = span.get_span_context()
    parent = span.parent
    parts = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
        _trace_state(context.trace_state),
    ]
    if parent is not None:
        parts.append(b"\x22\x08")
        parts.append(parent.span_id.to_bytes(8, "big"))
    name = span.name
    if name:
        parts.append(_field(b"\x2a", name.encode()))
    parts.append(_KIND[span.kind.value])
    start, end = span.start_time, span.end_time
    if start and end:
        parts.append(_TIMES(0x39, start, 0x41, end))
    else:
        if start:
            parts.append(b"\x39" + _FIXED64(start))
        if end:
            parts.append(b"\x41" + _FIXED64(end))
    parts.append(_SPAN_ATTRIBUTES.encode(span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    events = span.events
    if events:
        parts.append(_events(events))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    links = span.links
    if links:
        parts.append(_links(links))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))
    parts.append(_status(span.status))
    parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return _field(b"\x12", b"".join(parts))


class _Encodings:
    """Resources' and scopes' encodings, by identity (the SDK makes each once).

    Shared by the export threads of every exporter in the process: a lookup and a store
    are single dictionary operations, and a race at worst encodes one twice.
    """

    def __init__(self) -> None:
        self._known: dict[int, tuple[object, bytes]] = {}

    def get(self, thing: Any, encode: Callable[[Any], bytes]) -> bytes:
        known = self._known.get(id(thing))
        if known is not None and known[0] is thing:
            return known[1]
        encoded = encode(thing)
        if len(self._known) >= 64:
            self._known.clear()
        self._known[id(thing)] = (thing, encoded)
        return encoded


def _resource(resource: Any) -> bytes:
    """``ResourceSpans.resource`` (field 1)."""
    return _field(b"\x0a", _RESOURCE_ATTRIBUTES.encode(resource.attributes))


def _scope(scope: Any) -> bytes:
    """``ScopeSpans.scope`` (field 1); the SDK writes an empty scope when there is none."""
    if scope is None:
        return _EMPTY_SCOPE
    body = b""
    if scope.name:
        body += _field(b"\x0a", scope.name.encode())
    if scope.version:
        body += _field(b"\x12", scope.version.encode())
    body += _SCOPE_ATTRIBUTES.encode(scope.attributes)
    return _field(b"\x0a", body)


_RESOURCES = _Encodings()
_SCOPES = _Encodings()


def encode_spans_request(spans: Sequence[Any]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans`` (SDK ``ReadableSpan``\\ s),
    grouped by resource, then by instrumentation scope, in the order they first appear."""
    grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        by_scope = grouped.get(id(resource))
        if by_scope is None:
            by_scope = grouped[id(resource)] = (resource, {})
        entry = by_scope[1].get(id(scope))
        if entry is None:
            entry = by_scope[1][id(scope)] = (scope, [])
        entry[1].append(_span(span))
    out = []
    for resource, scopes in grouped.values():
        body = [_RESOURCES.get(resource, _resource)]
        for scope, encoded in scopes.values():
            scope_body = _SCOPES.get(scope, _scope) + b"".join(encoded)
            schema = getattr(scope, "schema_url", None) if scope is not None else None
            if schema:
                scope_body += _field(b"\x1a", schema.encode())
            body.append(_field(b"\x12", scope_body))
        if resource.schema_url:
            body.append(_field(b"\x1a", resource.schema_url.encode()))
        out.append(_field(b"\x0a", b"".join(body)))
    return b"".join(out)
