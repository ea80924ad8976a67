"""Throughput with tracing and Prometheus metrics on, against both off, in the same run.

Modes, each measured in a fresh interpreter (the OpenTelemetry provider is per process):

- ``off``: no SDK, no exporter.
- ``all``: the SDK from ``OTEL_*`` (``configure_sdk``: BatchSpanProcessor, OTLP/HTTP to a
  local receiver that discards), every trace sampled, and the Prometheus exporter plugin.
- ``sampled``: the same with ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` at 0.1.
- For the breakdown: ``metrics`` (the Prometheus exporter alone), ``traces`` (every trace
  sampled, no exporter) and ``traces10`` (10% sampled, no exporter).

Each drains ``--jobs`` pre-queued no-op jobs (enqueued by the same process, so producer
spans exist and consumer spans follow their sampling; they are exported before the timed
part) with one ``AsyncWorker``; rounds
interleave the modes; medians are compared, and the per-job cost is
``1/rate(mode) - 1/rate(off)`` in microseconds.

    .venv/bin/python benchmarks/observability_overhead.py [--jobs 5000] [--rounds 5] [--broker URL]

Targets (issue "Observability"): ``all`` >= 60% of ``off``; ``sampled`` >= 85%.

The floor: each round also measures, in a fresh interpreter with the same SDK set-up, what
the OpenTelemetry SDK and prometheus-client cost per job by themselves, outside any
worker: the exact calls a consumer span needs (extract the context from the headers,
``start_span`` with its link and attributes, make it current, set the outcome, end it;
CPU of all threads, so the BatchSpanProcessor's export thread with its protobuf encoding
is included) for sampled and unsampled parents, and the five prometheus-client updates
of one job. The spans are flushed every ``FLOOR_CHUNK`` (the processor's batch size), in
batches of that size as the worker's export thread sends them: left to the export thread,
a loop that does nothing but make spans outruns it, and the processor drops what its
queue cannot hold (about a fifth of them) without encoding them. A dropped span fails
the floor run. ``ceiling = off / (off + floor)`` is the best ratio any worker calling those
libraries could reach at this baseline; the report prints it beside each target.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODES = ("off", "all", "sampled", "metrics", "traces", "traces10")
_TRACED = {"all", "sampled", "traces", "traces10"}
_METRICS = {"all", "sampled", "metrics"}
_SAMPLED_10 = {"sampled", "traces10"}
TARGETS = {"all": 0.60, "sampled": 0.85}


class _Discard(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def child(mode: str, broker: str, jobs: int) -> None:
    """Runs in the subprocess: one measurement, printed as ``RATE <jobs/s> <cpu> <export>``.

    ``cpu``: CPU of the whole process per job while it drains (µs, every thread);
    ``export``: the part of it in the BatchSpanProcessor's export thread (0 without one).
    """
    from opentelemetry import trace

    from uno_jobs import Queue, task
    from uno_jobs.queue import JobSpec
    from uno_jobs.tracing import configure_sdk, shutdown_sdk
    from uno_jobs.worker import AsyncWorker

    @task(name="bench.observe_noop")
    async def noop() -> None:
        return None

    exporters = ["prometheus"] if mode in _METRICS else []
    if mode in _TRACED:
        assert configure_sdk("uno-bench"), "OTEL_EXPORTER_OTLP_ENDPOINT missing"

    async def run() -> tuple[float, float, float]:
        queue = Queue(f"bench-observe-{uuid.uuid4().hex[:8]}", broker_url=broker)
        try:
            for start in range(0, jobs, 1000):
                batch = [JobSpec(noop) for _ in range(min(1000, jobs - start))]
                await queue.enqueue_many(batch)
            # The producer spans are exported now, not while the worker is timed.
            flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if callable(flush):
                flush()
            worker = AsyncWorker(
                queue_name=queue.name,
                broker_url=broker,
                max_concurrent=50,
                batch_size=100,
                metrics_exporters=exporters,
            )
            worker.settings = {"prometheus_port": 0}
            exporter = _export_thread_clock()
            export_started = 0.0 if exporter is None else time.clock_gettime(exporter)
            cpu_started = time.process_time()
            started = time.perf_counter()
            await worker.start()
            while worker.stats.processed < jobs:
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            export = 0.0 if exporter is None else time.clock_gettime(exporter) - export_started
            await worker.shutdown()
            return jobs / elapsed, cpu / jobs * 1e6, export / jobs * 1e6
        finally:
            await queue.delete()
            queue.close()

    rate, cpu_us, export_us = asyncio.run(run())
    shutdown_sdk()
    print(f"RATE {rate:.1f} {cpu_us:.1f} {export_us:.1f}", flush=True)


def _export_thread_clock() -> int | None:
    """The CPU clock of the BatchSpanProcessor's export thread, if there is one."""
    for thread in threading.enumerate():
        if thread.name.startswith("OtelBatchSpan") and thread.ident is not None:
            return time.pthread_getcpuclockid(thread.ident)
    return None


FLOOR_SPANS = 20_000
#: The BatchSpanProcessor's batch size (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, default 512):
#: the floor flushes after each such chunk, so its queue never overflows.
FLOOR_CHUNK = 512


class _Drops(logging.Handler):
    """Notices the processor's "Queue full, dropping" warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.dropped = False

    def emit(self, record: logging.LogRecord) -> None:
        self.dropped = self.dropped or "dropping" in record.getMessage()


def floor_child() -> None:
    """Runs in a subprocess: the libraries' own cost per job, printed as ``FLOOR ...``."""
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace import Link, SpanKind

    from uno_jobs.tracing import configure_sdk, shutdown_sdk

    assert configure_sdk("uno-bench-floor"), "OTEL_EXPORTER_OTLP_ENDPOINT missing"
    drops = _Drops()
    logging.getLogger("opentelemetry").addHandler(drops)
    provider: Any = trace.get_tracer_provider()
    tracer = provider.get_tracer("floor")
    results = {}
    for sampled in (True, False):
        carriers = []
        for _ in range(FLOOR_SPANS):
            producer = tracer.start_span("send q", kind=SpanKind.PRODUCER)
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(producer))
            if not sampled:  # as a producer that sampled this trace out would send it
                carrier["traceparent"] = carrier["traceparent"][:-2] + "00"
            producer.end()
            carriers.append(carrier)
            if len(carriers) % FLOOR_CHUNK == 0:
                provider.force_flush()
        provider.force_flush()
        started = time.process_time()
        for n, carrier in enumerate(carriers):
            parent = propagate.extract(carrier)
            link = trace.get_current_span(parent).get_span_context()
            span = tracer.start_span(
                "process q",
                context=parent,
                kind=SpanKind.CONSUMER,
                links=[Link(link)],
                attributes={
                    "messaging.system": "rabbitmq",
                    "messaging.destination.name": "q",
                    "messaging.message.id": str(n),
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "uno_jobs.task": "bench.observe_noop",
                    "uno_jobs.attempt": 1,
                },
            )
            token = context.attach(trace.set_span_in_context(span))
            span.set_attribute("uno_jobs.outcome", "succeeded")
            context.detach(token)
            span.end()
            if (n + 1) % FLOOR_CHUNK == 0:
                provider.force_flush()
        provider.force_flush()
        results[sampled] = (time.process_time() - started) / FLOOR_SPANS * 1e6
    shutdown_sdk()
    assert not drops.dropped, "the BatchSpanProcessor dropped spans: the floor would not count them"

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    labels = ("queue", "task")
    processed = Counter("p", "p", [*labels, "outcome"], registry=registry).labels("q", "t", "ok")
    duration = Histogram("d", "d", labels, registry=registry).labels("q", "t")
    wait = Histogram("w", "w", labels, registry=registry).labels("q", "t")
    running = Gauge("r", "r", labels, registry=registry).labels("q", "t")
    started = time.process_time()
    for _ in range(FLOOR_SPANS):
        wait.observe(0.003)
        running.inc()
        processed.inc()
        duration.observe(0.0002)
        running.dec()
    metrics_us = (time.process_time() - started) / FLOOR_SPANS * 1e6
    print(f"FLOOR {results[True]:.2f} {results[False]:.2f} {metrics_us:.2f}", flush=True)


def measure_floor(endpoint: str) -> tuple[float, float, float]:
    """µs per job: a sampled consumer span, an unsampled one, a job's metric updates."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    done = subprocess.run(
        [sys.executable, __file__, "--floor"], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("FLOOR ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"floor run failed:\n{done.stderr[-3000:]}")
    sampled, unsampled, metrics_us = (float(x) for x in lines[-1].split()[1:])
    return sampled, unsampled, metrics_us


def measure(
    mode: str, broker: str, jobs: int, endpoint: str, home: str
) -> tuple[float, float, float]:
    """jobs/s, CPU µs per job of the process, of its export thread."""
    env = {**os.environ, "UNO_JOBS_HOME": home}
    for name in list(env):
        if name.startswith("OTEL_"):
            del env[name]
    if mode in _TRACED:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env["OTEL_SERVICE_NAME"] = "uno-bench"
    if mode in _SAMPLED_10:
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = "0.1"
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--broker", broker, "--jobs", str(jobs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RATE ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} run failed:\n{done.stderr[-3000:]}")
    rate, cpu_us, export_us = (float(x) for x in lines[-1].split()[1:])
    return rate, cpu_us, export_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        floor_child()
        return 0
    if args.child:
        child(args.child, args.broker, args.jobs)
        return 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
    exports: dict[str, list[float]] = {mode: [] for mode in MODES}
    floors: list[tuple[float, float, float]] = []
    print(
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} broker={args.broker} "
        f"jobs={args.jobs} rounds={args.rounds} python={sys.version.split()[0]}"
    )
    with tempfile.TemporaryDirectory() as home:
        for round_no in range(1, args.rounds + 1):
            order = MODES if round_no % 2 else tuple(reversed(MODES))
            for mode in order:
                rate, cpu_us, export_us = measure(mode, args.broker, args.jobs, endpoint, home)
                rates[mode].append(rate)
                cpus[mode].append(cpu_us)
                exports[mode].append(export_us)
                print(
                    f"round {round_no}: {mode:>7} {rate:,.0f} jobs/s, CPU {cpu_us:.0f} us per "
                    f"job (export thread {export_us:.0f})",
                    flush=True,
                )
            floors.append(measure_floor(endpoint))
            sampled_us, unsampled_us, metrics_us = floors[-1]
            print(
                f"round {round_no}:   floor sampled span {sampled_us:.1f} us, unsampled "
                f"{unsampled_us:.1f} us, metrics {metrics_us:.1f} us per job",
                flush=True,
            )
    server.shutdown()
    off = statistics.median(rates["off"])
    sampled_us, unsampled_us, metrics_us = (
        statistics.median(floor[i] for floor in floors) for i in range(3)
    )
    off_us = 1e6 / off
    floor_us = {
        "all": sampled_us + metrics_us,
        "sampled": 0.1 * sampled_us + 0.9 * unsampled_us + metrics_us,
        "metrics": metrics_us,
        "traces": sampled_us,
        "traces10": 0.1 * sampled_us + 0.9 * unsampled_us,
    }
    print(
        f"   floor: medians: sampled consumer span {sampled_us:.1f} us, unsampled "
        f"{unsampled_us:.1f} us, a job's metric updates {metrics_us:.1f} us; off = "
        f"{off_us:.0f} us per job"
    )
    failed = False
    for mode in MODES[1:]:
        on = statistics.median(rates[mode])
        ratio = on / off
        cost_us = (1 / on - 1 / off) * 1e6
        target = TARGETS.get(mode)
        verdict = "" if target is None else f" ({'PASS' if ratio >= target else 'FAIL'}: "
        verdict += "" if target is None else f"target >= {target:.2f})"
        failed = failed or (target is not None and ratio < target)
        ceiling = off_us / (off_us + floor_us[mode])
        cpu_us = statistics.median(cpus[mode]) - statistics.median(cpus["off"])
        print(
            f"{mode:>8}: median {on:,.0f}/s vs off {off:,.0f}/s, ratio {ratio:.2f}, "
            f"{cost_us:.0f} us per job (libraries' floor {floor_us[mode]:.0f} us: "
            f"ceiling {ceiling:.2f}){verdict}; CPU {cpu_us:+.0f} us per job "
            f"(export thread {statistics.median(exports[mode]):.0f})"
        )
    print(f"load={os.getloadavg()[0]:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
