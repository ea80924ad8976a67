"""The metrics files of a multiprocess directory: read them for a scrape; retire dead ones.

prometheus-client names each file ``{type}_{pid}.db`` (``gauge_{mode}_{pid}.db`` for
gauges) and never deletes one, so a pool that recycles its children would leave a few
files per child forever, and every scrape would read them all. When a child has exited,
:func:`retire_process` folds its files into one archive file per type
(``counter_archive.db``, ``histogram_archive.db``, ...), which prometheus-client reads like
any other process's file:

- counters, histograms, summaries and ``sum`` gauges: values added to the archive;
  ``min`` / ``max`` gauges: the smaller / larger one kept; ``mostrecent``: the newer one.
- ``live*`` gauges: removed (``multiprocess.mark_process_dead``): they describe live
  processes only.
- ``all`` gauges (prometheus-client's default mode, one series per process id): removed
  too; keeping a series for every dead child is the growth this module prevents.

The archive is rewritten to a temporary name and renamed over the old one, while holding
the directory's exclusive lock; :class:`DirectoryCollector` reads under the shared lock,
so a scrape sees a dead child's values either in its files or in the archive, never both.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from uno_jobs_prometheus._multiproc import locked

# prometheus-client's file header: the used size (4 bytes) and padding (4 bytes).
_HEADER_BYTES = 8

__all__ = ["ARCHIVE", "CombinedCollector", "DirectoryCollector", "retire_process"]

ARCHIVE = "archive"

_Value = tuple[float, float]  # (value, timestamp)


def _add(old: _Value, new: _Value) -> _Value:
    return (old[0] + new[0], max(old[1], new[1]))


def _smaller(old: _Value, new: _Value) -> _Value:
    return new if new[0] < old[0] else old


def _larger(old: _Value, new: _Value) -> _Value:
    return new if new[0] > old[0] else old


def _newer(old: _Value, new: _Value) -> _Value:
    return new if new[1] >= old[1] else old


# How a dead process's value joins the archive, by file prefix; other prefixes are dropped.
_COMBINE: dict[str, Callable[[_Value, _Value], _Value]] = {
    "counter": _add,
    "histogram": _add,
    "summary": _add,
    "gauge_sum": _add,
    "gauge_min": _smaller,
    "gauge_max": _larger,
    "gauge_mostrecent": _newer,
}


def _read(path: str) -> dict[str, _Value]:
    if not _started(path):  # a child that died while creating it left it empty
        return {}
    entries = MmapedDict.read_all_values_from_file(path)  # type: ignore[no-untyped-call]
    return {key: (value, timestamp) for key, value, timestamp, _ in entries}


def _write(path: str, values: dict[str, _Value]) -> None:
    # Not named *.db while it is written, so that no scrape reads it half-done.
    temporary = path[: -len(".db")] + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)
    mmap = MmapedDict(temporary)  # type: ignore[no-untyped-call]
    try:
        for key, (value, timestamp) in values.items():
            mmap.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
    finally:
        mmap.close()  # type: ignore[no-untyped-call]
    os.replace(temporary, path)


def retire_process(directory: str, pid: int) -> int:
    """Fold the files of the exited process ``pid`` into the archive; returns how many.

    Call it only once ``pid`` has exited (its files no longer change).
    """
    suffix = f"_{pid}.db"
    with locked(directory, exclusive=True):
        paths = glob.glob(os.path.join(directory, f"*{suffix}"))
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        for path in paths:
            if not os.path.exists(path):
                continue  # a live gauge's file, removed just above
            prefix = os.path.basename(path)[: -len(suffix)]
            combine = _COMBINE.get(prefix)
            if combine is not None:
                archive = os.path.join(directory, f"{prefix}_{ARCHIVE}.db")
                merged = _read(archive) if os.path.exists(archive) else {}
                for key, value in _read(path).items():
                    old = merged.get(key)
                    merged[key] = value if old is None else combine(old, value)
                _write(archive, merged)
            os.remove(path)
    return len(paths)


class DirectoryCollector(Collector):
    """prometheus-client's ``MultiProcessCollector`` of ``directory``, read under its lock."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        with locked(self.directory, exclusive=False):
            files = [f for f in glob.glob(os.path.join(self.directory, "*.db")) if _started(f)]
            return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


def _started(path: str) -> bool:
    """Whether a process has initialised this file: prometheus-client creates it empty, then
    sizes it, so a scrape at that moment would fail reading its header. An empty file holds
    no samples yet; one removed meanwhile holds none either."""
    try:
        return os.path.getsize(path) >= _HEADER_BYTES
    except OSError:
        return False


class CombinedCollector(Collector):
    """This process's in-memory metrics and its children's directory, as one scrape.

    For a worker process that imported prometheus-client before the exporter could set
    ``PROMETHEUS_MULTIPROC_DIR`` (its values stay in memory; its children write files).
    A family found in both (a metric defined at import of a task module, so in the worker
    process too) is served once: counter, histogram and summary values are added (their
    ``_created`` samples dropped, as in multiprocess mode); for any other type the
    children's family stands, since task code runs in the children.
    """

    def __init__(self, registry: Collector, directory: str) -> None:
        self.registry = registry
        self.children = DirectoryCollector(directory)

    def collect(self) -> Iterable[Metric]:
        children = {family.name: family for family in self.children.collect()}
        out: list[Metric] = []
        for family in self.registry.collect():
            other = children.get(family.name)
            if other is None:
                out.append(family)
            elif family.type == other.type and family.type in ("counter", "histogram", "summary"):
                _add_samples(other, family)
        out.extend(children.values())
        return out


def _add_samples(into: Metric, extra: Metric) -> None:
    index = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(into.samples)}
    for sample in extra.samples:
        if sample.name.endswith("_created"):
            continue
        key = (sample.name, tuple(sorted(sample.labels.items())))
        position = index.get(key)
        if position is None:
            index[key] = len(into.samples)
            into.samples.append(sample)
        else:
            old = into.samples[position]
            into.samples[position] = old._replace(value=old.value + sample.value)
