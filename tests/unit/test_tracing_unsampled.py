"""consumer_span under a remote parent, with the SDK that configure_sdk installs.

A plain ``traceparent`` (no ``tracestate``, no ``baggage``) is read without the
propagators (``_plain_traceparent``), and with a parent-based sampler an unsampled parent's
span is made without the SDK (``_unsampled_child``): either way the span must be the one
the SDK would have made from the propagator's context. Each case runs in a fresh
interpreter: a process sets its tracer provider once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import json, os
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from uno_jobs import tracing

assert tracing.configure_sdk("test")
provider = trace.get_tracer_provider()
recorded = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(recorded))
parent_span_id = "00f067aa0ba902b7"
trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
state = os.environ.get("TEST_TRACESTATE")
out = {}

def ctx(c):
    return [format(c.trace_id, "032x"), format(c.span_id, "016x"), c.is_remote,
            int(c.trace_flags), dict(c.trace_state)]

for flags in ("00", "01", "02", "03"):
    headers = {"traceparent": f"00-{trace_id}-{parent_span_id}-{flags}"}
    if state:
        headers["tracestate"] = state
    with tracing.consumer_span("redis", "q", "j", "t", 1, headers) as span:
        recording = span.is_recording()
        inner = trace.get_tracer("task").start_span("inner")
        inner_recording = inner.is_recording()
        inner.end()
    sdk = provider.get_tracer("x").start_span("p", context=propagate.extract(headers))
    ours, theirs = span.get_span_context(), sdk.get_span_context()
    out[flags] = {
        "type": type(span).__name__,
        "sdk_type": type(sdk).__name__,
        "recording": recording,
        "trace_id": format(ours.trace_id, "032x"),
        "new_span_id": format(ours.span_id, "016x") != parent_span_id and ours.span_id != 0,
        "sampled": ours.trace_flags.sampled,
        "sdk_sampled": theirs.trace_flags.sampled,
        "trace_state": dict(ours.trace_state),
        "sdk_trace_state": dict(theirs.trace_state),
        "remote": ours.is_remote,
        "inner_recording": inner_recording,
        "kind": str(getattr(span, "kind", None)),
        "parent": ctx(span.parent) if getattr(span, "parent", None) else None,
        "links": [ctx(link.context) for link in getattr(span, "links", ())],
        "extracted": ctx(trace.get_current_span(propagate.extract(headers)).get_span_context()),
    }
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)  # nothing to export: the endpoint below does not exist
"""


def _run(
    sampler: str | None, tracestate: str = "k=v", **variables: str
) -> dict[str, dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
    env["TEST_TRACESTATE"] = tracestate
    env.update(variables)
    if sampler is not None:
        env["OTEL_TRACES_SAMPLER"] = sampler
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    result: dict[str, dict[str, object]] = json.loads(lines[-1][len("RESULT ") :])
    return result


@pytest.mark.parametrize(
    ("sampler", "tracestate", "variables"),
    [
        (None, "k=v", {}),
        ("parentbased_traceidratio", "k=v", {}),
        # Without a tracestate the traceparent alone decides (read without propagators).
        (None, "", {}),
        ("parentbased_traceidratio", "", {}),
        # Another propagator set-up: the propagators are asked again.
        (None, "", {"OTEL_PROPAGATORS": "tracecontext"}),
    ],
)
def test_a_remote_parent_gives_the_span_the_sdk_would_make(
    sampler: str | None, tracestate: str, variables: dict[str, str]
) -> None:
    result = _run(sampler, tracestate, **variables)
    unsampled = result["00"]
    assert unsampled["type"] == unsampled["sdk_type"] == "NonRecordingSpan"
    assert unsampled["recording"] is False
    assert unsampled["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert unsampled["new_span_id"] is True
    assert unsampled["sampled"] is False and unsampled["sdk_sampled"] is False
    expected_state = {"k": "v"} if tracestate else {}
    assert unsampled["trace_state"] == unsampled["sdk_trace_state"] == expected_state
    assert unsampled["remote"] is False
    assert unsampled["inner_recording"] is False
    assert result["02"]["type"] == "NonRecordingSpan" and result["02"]["sampled"] is False
    for flags in ("01", "03"):  # sampled, with and without another flag bit
        sampled = result[flags]
        assert sampled["recording"] is True and sampled["inner_recording"] is True
        assert sampled["kind"] == "SpanKind.CONSUMER"
        # The parent and the link are the producer's context as the propagator reads it.
        assert sampled["parent"] == sampled["extracted"]
        assert sampled["links"] == [sampled["extracted"]]
        assert sampled["extracted"][:4] == [
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
            True,
            int(flags, 16),
        ]
        assert sampled["trace_state"] == expected_state


def test_a_sampler_that_ignores_the_parent_still_decides() -> None:
    # always_on samples whatever the parent says: the SDK must be asked, not bypassed.
    unsampled = _run("always_on")["00"]
    assert unsampled["recording"] is True
    assert unsampled["sampled"] is True
    assert unsampled["inner_recording"] is True


def test_a_traceparent_the_propagator_rejects_is_not_read_on_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Upper-case hex, zero ids, another version: the API's propagator ignores such a
    header, so the fast path must not read it either (the full path then makes a root
    span the sampler decides); with ``tracestate`` or ``baggage`` the propagator's
    context carries more, so the full path reads it."""
    from opentelemetry import propagate

    from uno_jobs import _otel_tracing

    monkeypatch.setattr(_otel_tracing, "_default_textmap", propagate.get_global_textmap())
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    for value in (good, good[:-1] + "1"):  # the control: well-formed parents are read
        plain = _otel_tracing._plain_traceparent({"traceparent": value})
        assert plain == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, int(value[-2:]))
    assert _otel_tracing._plain_traceparent({"traceparent": good, "tracestate": "k=v"}) is None
    assert _otel_tracing._plain_traceparent({"traceparent": good, "baggage": "k=v"}) is None
    for value in (
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-00",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        " 00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
    ):
        assert _otel_tracing._plain_traceparent({"traceparent": value}) is None, value
    assert _otel_tracing._plain_traceparent({}) is None
    assert _otel_tracing._plain_traceparent({"traceparent": b"00-..."}) is None
    # Another propagator installed since: the fast path steps aside.
    monkeypatch.setattr(_otel_tracing, "_default_textmap", object())
    assert _otel_tracing._plain_traceparent({"traceparent": good}) is None
