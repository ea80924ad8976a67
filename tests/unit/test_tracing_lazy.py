"""OpenTelemetry is loaded only when a process could trace (``uno_jobs.tracing``'s docstring).

Each case runs in a fresh interpreter: what a process has imported cannot be undone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_UNTRACED = r"""
import asyncio, json, sys
from uno_jobs import AsyncWorker, Queue, task, tracing

@task(name="lazy.add")
def add(a, b):
    return a + b

async def main():
    queue = Queue("lazy", broker_url="memory://", store_url="memory://")
    worker = AsyncWorker(queue_name="lazy", broker_url="memory://", store_url="memory://")
    await worker.start()
    handle = await queue.enqueue("lazy.add", [2, 3])
    result = await handle.wait(timeout=10)
    await worker.shutdown()
    return result

result = asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
print(json.dumps({"result": result, "enabled": tracing.tracing_enabled(), "loaded": loaded}))
"""

_LATE_SDK = r"""
import json, sys
from uno_jobs import tracing
before = tracing.tracing_enabled()
loaded_before = any(m.startswith("opentelemetry") for m in sys.modules)
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider())  # the application, after importing uno_jobs
print(json.dumps({"before": before, "loaded_before": loaded_before,
                  "after": tracing.tracing_enabled()}))
"""

_BY_VARIABLE = r"""
import json
from uno_jobs import tracing
print(json.dumps({"enabled": tracing.tracing_enabled()}))
"""


def _run(script: str, **env: str) -> dict[str, object]:
    variables = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**variables, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_process_that_never_traces_does_not_load_opentelemetry() -> None:
    got = _run(_UNTRACED)
    assert got == {"result": 5, "enabled": False, "loaded": []}


def test_a_provider_installed_after_importing_uno_jobs_is_seen() -> None:
    assert _run(_LATE_SDK) == {"before": False, "loaded_before": False, "after": True}


def test_a_provider_named_by_the_api_variable_is_seen_without_an_import() -> None:
    assert _run(_BY_VARIABLE, OTEL_PYTHON_TRACER_PROVIDER="sdk_tracer_provider") == {
        "enabled": True
    }
    assert _run(_BY_VARIABLE) == {"enabled": False}
