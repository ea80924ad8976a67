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
"""

from __future__ import annotations

import argparse
import asyncio
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
    """Runs in the subprocess: one measurement, printed as ``RATE <jobs/s>``."""
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

    async def run() -> float:
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
            started = time.perf_counter()
            await worker.start()
            while worker.stats.processed < jobs:
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
            await worker.shutdown()
            return jobs / elapsed
        finally:
            await queue.delete()
            queue.close()

    rate = asyncio.run(run())
    shutdown_sdk()
    print(f"RATE {rate:.1f}", flush=True)


def measure(mode: str, broker: str, jobs: int, endpoint: str, home: str) -> float:
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
    return float(lines[-1].split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.broker, args.jobs)
        return 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    print(
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} broker={args.broker} "
        f"jobs={args.jobs} rounds={args.rounds} python={sys.version.split()[0]}"
    )
    with tempfile.TemporaryDirectory() as home:
        for round_no in range(1, args.rounds + 1):
            order = MODES if round_no % 2 else tuple(reversed(MODES))
            for mode in order:
                rate = measure(mode, args.broker, args.jobs, endpoint, home)
                rates[mode].append(rate)
                print(f"round {round_no}: {mode:>7} {rate:,.0f} jobs/s", flush=True)
    server.shutdown()
    off = statistics.median(rates["off"])
    failed = False
    for mode in MODES[1:]:
        on = statistics.median(rates[mode])
        ratio = on / off
        cost_us = (1 / on - 1 / off) * 1e6
        target = TARGETS.get(mode)
        verdict = "" if target is None else f" ({'PASS' if ratio >= target else 'FAIL'}: "
        verdict += "" if target is None else f"target >= {target:.2f})"
        failed = failed or (target is not None and ratio < target)
        print(
            f"{mode:>8}: median {on:,.0f}/s vs off {off:,.0f}/s, ratio {ratio:.2f}, "
            f"{cost_us:.0f} us per job{verdict}"
        )
    print(f"load={os.getloadavg()[0]:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
