"""The public names of uno_jobs and uno_jobs.worker, and which of them load on first use."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_an_in_process_worker_does_not_load_the_process_machinery() -> None:
    # ProcessPoolWorker, WorkerPool and DistributedWorker are loaded on first use: an
    # AsyncWorker process (and a plugin that asks whether a worker is a process pool)
    # does not hold their code. Every public name still imports.
    script = textwrap.dedent(
        """
        import sys
        import uno_jobs
        from uno_jobs import AsyncWorker
        from uno_jobs.plugins import get_plugins
        get_plugins()  # installed plugins too (the Prometheus one asks about process pools)
        lazy = ["uno_jobs.worker._process", "uno_jobs.worker._pool",
                "uno_jobs.worker._distributed", "uno_jobs.coordination"]
        assert not [m for m in lazy if m in sys.modules], sorted(sys.modules)
        from uno_jobs import ProcessPoolWorker
        from uno_jobs.worker import (DistributedWorker, DistributedWorkerOptions,
            ProcessPoolWorkerOptions, WorkerPool, WorkerPoolOptions)
        import uno_jobs.worker
        assert uno_jobs.ProcessPoolWorker is uno_jobs.worker.ProcessPoolWorker
        assert ProcessPoolWorker.__module__ == "uno_jobs.worker._process"
        for name in uno_jobs.__all__:
            getattr(uno_jobs, name)
        for name in uno_jobs.worker.__all__:
            if name != "WorkerCoordinator":  # needs redis-py, tested with the coordinator
                getattr(uno_jobs.worker, name)
        try:
            uno_jobs.worker.Nope
        except AttributeError as exc:
            assert "Nope" in str(exc)
        else:
            raise AssertionError("no AttributeError")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr
