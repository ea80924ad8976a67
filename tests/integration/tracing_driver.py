"""Run by test_tracing_otlp.py in a fresh interpreter: SDK from OTEL_*, enqueue, work, exit.

    python tracing_driver.py BROKER_URL QUEUE WORKER_TYPE MARKER_FILE

Prints one JSON line: the job ids of the two jobs.
"""

from __future__ import annotations

import asyncio
import json
import sys

import tracing_tasks  # noqa: F401 - registers traced.*

from uno_jobs import Queue
from uno_jobs.tracing import configure_sdk, shutdown_sdk
from uno_jobs.worker._registry import get_worker_type


async def main(broker_url: str, queue_name: str, worker_type: str, marker: str) -> None:
    assert configure_sdk("uno-jobs-tracing-test"), "OTEL_EXPORTER_OTLP_ENDPOINT is not set"
    queue = Queue(queue_name, broker_url=broker_url)
    worker = get_worker_type(worker_type)(
        queue_name=queue_name,
        broker_url=broker_url,
        store_url=queue.store_url,
        allowed_modules=["tracing_tasks"],
        **({"max_processes": 1} if worker_type == "process" else {}),
    )
    await worker.start()
    try:
        work = await queue.enqueue("traced.work", [21])
        flaky = await queue.enqueue("traced.flaky", [marker])
        assert await work.wait(timeout=60) == 42
        assert await flaky.wait(timeout=60) == "second attempt"
    finally:
        await worker.shutdown()
        await queue.delete()
        queue.close()
    print(json.dumps({"work": work.id, "flaky": flaky.id}), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:5]))
    finally:
        shutdown_sdk()
