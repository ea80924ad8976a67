"""Resident memory of a worker process and its descendants, read from ``/proc``.

What is counted: ``VmRSS`` (``/proc/<pid>/status``) of the worker's process and of every
process below it, summed, as ``ps`` would show each of them. That counts the pages a
forked child shares with its parent once per process, so the figure of a forking worker
(Celery prefork, Dramatiq's supervisor and its worker process, uno_jobs'
ProcessPoolWorker) is an upper bound; ``Pss`` (``/proc/<pid>/smaps_rollup``, shared pages
divided among their sharers) is reported beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SoakSample",
    "TreeMemory",
    "descendants",
    "growth_after_warmup",
    "parse_kib",
    "peak_tree_memory",
    "tree_memory",
]

_PROC = Path("/proc")


def parse_kib(text: str, field: str) -> int | None:
    """The value in kB of ``field`` (``VmRSS``, ``Pss``) in a ``/proc`` status text."""
    prefix = f"{field}:"
    for line in text.splitlines():
        if line.startswith(prefix):
            parts = line[len(prefix) :].split()
            if parts and parts[0].isdigit():
                return int(parts[0])
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the process exited between the listing and the read
        return ""


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents first."""
    out = [pid]
    i = 0
    while i < len(out):
        parent = out[i]
        i += 1
        task_dir = _PROC / str(parent) / "task"
        try:
            tids = list(task_dir.iterdir())
        except OSError:
            continue
        for tid in tids:
            out += [int(c) for c in _read(tid / "children").split() if c.isdigit()]
    return out


@dataclass(frozen=True)
class TreeMemory:
    """Memory of a process tree in MiB.

    Attributes:
        rss_mib: Sum of the processes' ``VmRSS``.
        pss_mib: Sum of their ``Pss`` (shared pages split among the sharers).
        processes: How many processes were counted.
    """

    rss_mib: float
    pss_mib: float
    processes: int


def tree_memory(pid: int) -> TreeMemory:
    """The memory of ``pid`` and its descendants, now."""
    rss = pss = 0
    pids = descendants(pid)
    for p in pids:
        rss += parse_kib(_read(_PROC / str(p) / "status"), "VmRSS") or 0
        pss += parse_kib(_read(_PROC / str(p) / "smaps_rollup"), "Pss") or 0
    return TreeMemory(rss / 1024, pss / 1024, len(pids))


def peak_tree_memory(pid: int, seconds: float, every_seconds: float = 0.25) -> TreeMemory:
    """The highest RSS (and the PSS of that sample) of the tree over ``seconds``."""
    deadline = time.monotonic() + seconds
    peak = tree_memory(pid)
    while time.monotonic() < deadline:
        time.sleep(every_seconds)  # a sampling interval, not a wait for an event
        now = tree_memory(pid)
        if now.rss_mib > peak.rss_mib:
            peak = now
    return peak


@dataclass(frozen=True)
class SoakSample:
    """One soak reading: seconds since the worker started, its memory, the queue's
    backlog and how many jobs had been enqueued."""

    seconds: float
    rss_mib: float
    pss_mib: float
    backlog: int
    sent: int


def growth_after_warmup(samples: list[SoakSample], warmup_seconds: float) -> float | None:
    """(Highest RSS after the first post-warm-up sample - that sample's RSS) / its RSS;
    ``None`` if fewer than two samples fall after the warm-up."""
    after = [s for s in samples if s.seconds >= warmup_seconds]
    if len(after) < 2:
        return None
    base = after[0].rss_mib
    return (max(s.rss_mib for s in after[1:]) - base) / base
