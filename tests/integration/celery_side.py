"""A Celery application for the interop tests, run by a real ``celery worker`` subprocess.

Configured from the environment the test sets: ``CELERY_SIDE_BROKER`` (broker URL),
``CELERY_SIDE_PREFIX`` (Redis ``global_keyprefix``, matching uno_jobs' ``key_prefix``),
``CELERY_SIDE_OUT`` (a folder: each run writes ``<job id>.json`` with what Celery's request
held) and, optionally, ``CELERY_SIDE_BACKEND`` (a result backend URL).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from celery import Celery

app = Celery("celery_side", broker=os.environ.get("CELERY_SIDE_BROKER", "memory://"))
app.conf.update(
    broker_transport_options=(
        {"global_keyprefix": os.environ["CELERY_SIDE_PREFIX"]}
        if os.environ.get("CELERY_SIDE_PREFIX")
        else {}
    ),
    result_backend=os.environ.get("CELERY_SIDE_BACKEND") or None,
    result_backend_transport_options=(
        {"global_keyprefix": os.environ["CELERY_SIDE_PREFIX"]}
        if os.environ.get("CELERY_SIDE_PREFIX")
        else {}
    ),
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="interop.echo", bind=True)  # type: ignore[untyped-decorator]
def echo(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    r = self.request
    seen = {
        "args": list(args),
        "kwargs": kwargs,
        "id": r.id,
        "task": self.name,
        "retries": r.retries,
        "root_id": r.root_id,
        "parent_id": r.parent_id,
        "group": r.group,
        "timelimit": list(r.timelimit) if r.timelimit else None,
        "origin": r.origin,
        "eta": r.eta,
        "expires": r.expires,
        "argsrepr": r.argsrepr,
        "kwargsrepr": r.kwargsrepr,
        "ignore_result": r.ignore_result,
        "delivery_routing_key": (r.delivery_info or {}).get("routing_key"),
        "hostname": r.hostname,
        "correlation_id": r.correlation_id,
    }
    out = Path(os.environ["CELERY_SIDE_OUT"]) / f"{r.id}.json"
    out.write_text(json.dumps(seen, default=str))
    return {"args": list(args), "kwargs": kwargs}
