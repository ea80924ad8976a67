"""Pieces of the OpenTelemetry SDK set-up that need the SDK itself (``configure_sdk`` only).

Imported by :func:`uno_jobs.tracing.configure_sdk` once it knows the SDK is installed;
nothing else imports it, so the library keeps to the API when there is no SDK.
"""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource

__all__ = ["HashedResource"]


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
