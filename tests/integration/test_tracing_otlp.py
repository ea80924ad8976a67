"""OpenTelemetry traces end to end, received by a real OTLP/HTTP endpoint on 127.0.0.1.

A driver process installs the SDK from ``OTEL_*`` variables (``configure_sdk``, as the CLI
does), enqueues two jobs and runs a worker; the test's receiver decodes the
``ExportTraceServiceRequest`` bodies and checks kinds, parentage, links and attributes:
``send {queue}`` (PRODUCER) → ``process {queue}`` (CONSUMER, child of and linked to the
producer span) → the task's own span, for an in-process worker and for process-pool
children; a retried job's attempts are in the trace of its one ``send``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
SYSTEMS = {
    "embedded": "uno_jobs_embedded",
    "redis": "redis",
    "amqp": "rabbitmq",
    "sqs": "aws_sqs",
}


class Receiver:
    """An OTLP/HTTP traces endpoint that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []  # (resource attributes, span)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    resource = _attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend((resource, s) for s in scope_spans.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.mark.parametrize("worker_type", ["async", "thread", "process"])
def test_traces_from_enqueue_to_completion(
    broker_url: str,
    worker_type: str,
    queue_name: str,
    receiver: Receiver,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    kind = request.node.callspec.params["broker_url"]
    if kind != "embedded" and worker_type == "thread":
        pytest.skip("the thread hand-off is broker-independent: checked on the embedded broker")
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "tracing-test",
    }
    env.pop("OTEL_SDK_DISABLED", None)
    marker = tmp_path / "flaky-marker"
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "tracing_driver.py"),
            broker_url,
            queue_name,
            worker_type,
            str(marker),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ids = json.loads(done.stdout.strip().splitlines()[-1])

    spans = [s for _, s in receiver.spans]
    assert {res.get("service.name") for res, _ in receiver.spans} == {"tracing-test"}
    by_id = {s.span_id: s for s in spans}

    def of_job(name: str, job_id: str) -> list[Span]:
        return [
            s
            for s in spans
            if s.name == name and _attributes(s.attributes).get("messaging.message.id") == job_id
        ]

    system = SYSTEMS[kind]
    # The plain job: send → process → the task's own span.
    (send,) = of_job(f"send {queue_name}", ids["work"])
    (process,) = of_job(f"process {queue_name}", ids["work"])
    assert send.kind == Span.SPAN_KIND_PRODUCER
    assert process.kind == Span.SPAN_KIND_CONSUMER
    assert process.trace_id == send.trace_id
    assert process.parent_span_id == send.span_id
    assert [link.span_id for link in process.links] == [send.span_id]
    attrs = _attributes(process.attributes)
    assert attrs["messaging.system"] == system
    assert attrs["messaging.destination.name"] == queue_name
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["uno_jobs.task"] == "traced.work"
    assert attrs["uno_jobs.attempt"] == 1
    assert attrs["uno_jobs.outcome"] == "succeeded"
    assert _attributes(send.attributes)["messaging.operation.type"] == "send"
    assert _attributes(send.attributes)["messaging.system"] == system
    (inside,) = [s for s in spans if s.name == "inside work"]
    assert inside.trace_id == send.trace_id
    assert inside.parent_span_id == process.span_id, "the task's span nests under process"
    assert by_id[inside.parent_span_id] is process

    # The retried job: one send, two process spans in its trace; the first failed.
    (flaky_send,) = of_job(f"send {queue_name}", ids["flaky"])
    attempts = sorted(
        of_job(f"process {queue_name}", ids["flaky"]),
        key=lambda s: _attributes(s.attributes)["uno_jobs.attempt"],
    )
    assert [_attributes(s.attributes)["uno_jobs.outcome"] for s in attempts] == [
        "retried",
        "succeeded",
    ]
    assert all(s.trace_id == flaky_send.trace_id for s in attempts)
    assert all(s.parent_span_id == flaky_send.span_id for s in attempts)
    first, second = attempts
    assert first.status.code == Status.STATUS_CODE_ERROR
    assert [e.name for e in first.events] == ["exception"]
    exception = _attributes(first.events[0].attributes)
    assert exception["exception.type"] == "RuntimeError"
    assert second.status.code != Status.STATUS_CODE_ERROR


def test_example_producer_script_exports_send_spans(receiver: Receiver, uno_home: Path) -> None:
    """examples/tracing/send.py configures the SDK from OTEL_* and traces each enqueue."""
    example = HERE.parent.parent / "examples" / "tracing"
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "UNO_JOBS_HOME": str(uno_home),
        "UNO_JOBS_BROKER_URL": "embedded://",
    }
    for name in ("OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "UNO_JOBS_STORE_URL"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "send.py", "2"],
        cwd=example,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().endswith("traced")
    sends = [(res, s) for res, s in receiver.spans if s.name == "send reports"]
    assert len(sends) == 2
    assert {res["service.name"] for res, _ in sends} == {"report-producer"}
    assert all(s.kind == Span.SPAN_KIND_PRODUCER for _, s in sends)
