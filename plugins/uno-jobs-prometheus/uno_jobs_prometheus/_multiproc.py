"""prometheus-client's multiprocess mode for process-pool workers, decided before its import.

prometheus-client picks how metric values are stored when it is first imported: in memory,
or, when ``PROMETHEUS_MULTIPROC_DIR`` is set, in one memory-mapped file per process and
metric type in that directory. A ``ProcessPoolWorker``'s children run task code that may
record metrics, so they must write files the worker process can read. Hence:

- ``ProcessPoolWorker`` and ``PROMETHEUS_MULTIPROC_DIR`` set: that directory is used (the
  user owns it; wipe it between runs, as prometheus-client documents).
- ``ProcessPoolWorker`` and the variable unset: :func:`children_directory` creates a private
  temporary directory, once per process, and sets the variable *before* prometheus-client
  is imported by this plugin. Children are spawned with the worker's environment, so they
  write there. The directory is removed when the worker process exits.
- Any other worker: nothing changes (values in memory).

This module never imports prometheus-client (importing the plugin must not decide the
mode). Writers of the directory (``_files.retire_process``) and readers (the scrape) hold
an ``flock`` on ``.uno-jobs-prometheus.lock`` in it, exclusive and shared.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator

from uno_jobs.errors import ConfigurationError
from uno_jobs.worker import BaseWorker

__all__ = ["MULTIPROC_ENV", "children_directory", "locked", "prometheus_imported"]

log = logging.getLogger("uno_jobs.prometheus")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LOCK_NAME = ".uno-jobs-prometheus.lock"

_private: str | None = None
_private_lock = threading.Lock()


def prometheus_imported() -> bool:
    """Whether prometheus-client was imported in this process already (its mode is fixed)."""
    return "prometheus_client" in sys.modules


def _is_process_pool(worker: BaseWorker) -> bool:
    # Without importing it: uno_jobs loads ProcessPoolWorker's module (and its process
    # machinery) on first use, and no instance exists before that.
    module = sys.modules.get("uno_jobs.worker._process")
    return module is not None and isinstance(worker, module.ProcessPoolWorker)


def children_directory(worker: BaseWorker) -> str | None:
    """The directory ``worker``'s children write their metrics to; ``None``: no children.

    For a ``ProcessPoolWorker``, sets ``PROMETHEUS_MULTIPROC_DIR`` (to a private temporary
    directory) if it is unset. Call it before the worker spawns its children and before
    prometheus-client is imported, so that the worker process writes files too.

    Raises:
        ConfigurationError: ``PROMETHEUS_MULTIPROC_DIR`` names something that is not a
            directory.
    """
    if not _is_process_pool(worker):
        return None
    path = os.environ.get(MULTIPROC_ENV, "")
    if path:
        if not os.path.isdir(path):
            raise ConfigurationError(
                f"prometheus exporter: {MULTIPROC_ENV}={path!r} is not a directory "
                "(create it, or unset the variable to use a private temporary one)"
            )
        return path
    path = _private_directory()
    os.environ[MULTIPROC_ENV] = path
    if worker.child_pids:
        log.warning(
            "prometheus exporter of %s created after its children started: what task code "
            "records in them is missing from the scrape until they are replaced (set %s "
            "before starting the worker)",
            worker.worker_id,
            MULTIPROC_ENV,
        )
    if prometheus_imported():
        log.info(
            "prometheus-client was imported before the exporter of %s started: that "
            "process keeps its own metrics in memory; its children write to %s",
            worker.worker_id,
            path,
        )
    return path


def _private_directory() -> str:
    global _private
    with _private_lock:
        if _private is None:
            _private = tempfile.mkdtemp(prefix="uno-jobs-prometheus-")
            atexit.register(shutil.rmtree, _private, ignore_errors=True)
        return _private


@contextlib.contextmanager
def locked(directory: str, *, exclusive: bool) -> Iterator[None]:
    """Hold the directory's lock: exclusive to change files, shared to read them.

    An ``flock`` on a file of the directory, so it also orders processes sharing it.
    """
    fd = os.open(os.path.join(directory, _LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock
