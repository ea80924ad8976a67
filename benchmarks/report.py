"""Medians, ratios, targets and the printed and JSON reports of a benchmark run.

Pure functions over ``Sample`` values: no broker, no subprocess, so the unit tests can
check the arithmetic and the formatting. Every ratio is computed from figures of the same
run (medians over its rounds), never from numbers remembered from another run. The
markdown document and the plot are made by ``benchmarks._docs`` from the same values.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BROKER_LABELS",
    "METRICS",
    "PEERS",
    "SYSTEM_LABELS",
    "TARGET_RATIO",
    "Figure",
    "Metric",
    "PeerRatios",
    "Ratio",
    "Sample",
    "compute_peer_ratios",
    "compute_ratios",
    "format_table",
    "summarize",
    "to_json",
]

#: AsyncWorker on RabbitMQ must reach this share of raw kombu consume+ack there.
TARGET_RATIO = 0.50

SYSTEM_LABELS: dict[str, str] = {
    "uno": "uno_jobs Queue",
    "uno_sync": "uno_jobs SyncWorker",
    "uno_thread": "uno_jobs ThreadPoolWorker(8)",
    "uno_async": "uno_jobs AsyncWorker(50)",
    "uno_process": "uno_jobs ProcessPoolWorker(2)",
    "kombu": "raw kombu",
    "celery": "Celery solo",
    "celery_threads": "Celery threads(8)",
    "celery_prefork": "Celery prefork(1)",
    "dramatiq": "Dramatiq 1p x 8t",
}
BROKER_LABELS: dict[str, str] = {"embedded": "embedded", "redis": "Redis", "amqp": "RabbitMQ"}


@dataclass(frozen=True)
class Metric:
    """What a metric is called, its unit and which way is better."""

    label: str
    unit: str
    higher_is_better: bool = True


_RATE = "jobs/s"
METRICS: dict[str, Metric] = {
    "throughput": Metric("no-op throughput (worker)", _RATE),
    "prefill": Metric("prefill before the throughput run", _RATE),
    "publish": Metric("publish, no confirms", _RATE),
    "consume_p100": Metric("consume+ack, prefetch 100", _RATE),
    "consume_p150": Metric("consume+ack, prefetch 150", _RATE),
    "enq_single_conf": Metric("enqueue one by one, confirmed", _RATE),
    "enq_single_async_conf": Metric("enqueue one by one (async API), confirmed", _RATE),
    "enq_single_unconf": Metric("enqueue one by one, unconfirmed", _RATE),
    "enq_bulk_conf": Metric("enqueue bulk, confirmed", _RATE),
    "enq_bulk_unconf": Metric("enqueue bulk, unconfirmed", _RATE),
    "latency_p50": Metric("enqueue-to-start latency p50", "ms", False),
    "latency_p99": Metric("enqueue-to-start latency p99", "ms", False),
    "rss_idle": Metric("worker RSS, idle", "MiB", False),
    "pss_idle": Metric("worker PSS, idle", "MiB", False),
    "rss_backlog": Metric("worker RSS, peak under a backlog", "MiB", False),
    "pss_backlog": Metric("worker PSS under a backlog", "MiB", False),
}
#: Kept for callers of the old name.
METRIC_LABELS: dict[str, str] = {k: m.label for k, m in METRICS.items()}

_UNO_SYSTEMS = ("uno_sync", "uno_thread", "uno_async", "uno_process")
_CELERY_SYSTEMS = ("celery", "celery_threads", "celery_prefork")
#: The peers of the ratio table, in column order: Celery is the best of its pools.
PEERS = ("celery", "dramatiq", "kombu")
#: Metrics of the ratio table; raw kombu's throughput figure is its consume+ack loop.
_RATIO_METRICS = (
    "throughput",
    "enq_single_conf",
    "enq_bulk_conf",
    "latency_p50",
    "latency_p99",
    "rss_idle",
    "rss_backlog",
)


def _metric(name: str) -> Metric:
    return METRICS.get(name, Metric(name, ""))


@dataclass(frozen=True)
class Sample:
    """One measured value of one round.

    Attributes:
        system: ``uno_sync``, ``uno_async``, ``kombu``, ``celery``, ``dramatiq``, ...
        broker: ``embedded``, ``redis`` or ``amqp``.
        metric: A key of ``METRICS``.
        jobs: Messages or jobs the value was measured over.
        seconds: Elapsed seconds of a rate metric, ``None`` for the others or on failure.
        round: Round number, from 1.
        error: Why the measurement failed, if it did.
        amount: The value of a metric that is not a rate (ms, MiB).
    """

    system: str
    broker: str
    metric: str
    jobs: int
    seconds: float | None
    round: int = 1
    error: str | None = None
    amount: float | None = None

    @property
    def rate(self) -> float | None:
        """Jobs (or messages) per second; ``None`` if failed or not measurable."""
        if self.seconds is None or self.seconds <= 0:
            return None
        return self.jobs / self.seconds

    @property
    def value(self) -> float | None:
        """The measured value in its metric's unit; ``None`` if the measurement failed."""
        if self.error is not None:
            return None
        return self.amount if self.amount is not None else self.rate


@dataclass(frozen=True)
class Figure:
    """The median value of one (system, broker, metric) over the rounds of a run.

    ``values`` are the successful rounds' values and ``rounds`` their round numbers.
    """

    system: str
    broker: str
    metric: str
    jobs: int
    value: float | None
    values: tuple[float, ...] = ()
    failures: tuple[str, ...] = ()
    rounds: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.system, self.broker, self.metric)

    @property
    def rate(self) -> float | None:
        """The median, under the name of the days when every figure was a rate."""
        return self.value


@dataclass(frozen=True)
class Ratio:
    """A target: ``numerator / denominator`` of two figures of the same run, or one
    figure against an absolute bound (``denominator`` empty, ``unit`` set).

    Attributes:
        label: What is compared, for people.
        numerator: Label of the figure on top.
        denominator: Label of the figure below ("" for an absolute bound).
        value: The ratio (or the figure), ``None`` when a figure is missing.
        target: The bound it must meet, if this is a goal.
        at_most: The value must be at most ``target`` (latency, memory), not at least.
        unit: Unit of an absolute value; "" for a ratio.
    """

    label: str
    numerator: str
    denominator: str
    value: float | None
    target: float | None = None
    at_most: bool = False
    unit: str = ""

    @property
    def verdict(self) -> str:
        """``PASS``/``FAIL`` against the target, ``n/a`` if unmeasured, else empty."""
        if self.target is None:
            return ""
        if self.value is None:
            return "n/a"
        ok = self.value <= self.target if self.at_most else self.value >= self.target
        return "PASS" if ok else "FAIL"

    @property
    def bound(self) -> str:
        """The target as text: ``>= 2.00`` or ``<= 2.00 ms``."""
        if self.target is None:
            return ""
        sign = "<=" if self.at_most else ">="
        return f"{sign} {self.target:.2f}{' ' + self.unit if self.unit else ''}"


@dataclass(frozen=True)
class PeerRatios:
    """One row of the ratio table: uno_jobs ÷ each peer, for one metric on one broker.

    Attributes:
        broker: The broker.
        metric: The metric (higher or lower is better, as ``METRICS`` says).
        uno: Which uno_jobs figure is on top.
        values: Peer system -> ratio (``None`` when a figure is missing).
        peer_systems: Peer column -> the system whose figure is below (Celery's best pool).
    """

    broker: str
    metric: str
    uno: str
    values: dict[str, float | None] = field(default_factory=dict)
    peer_systems: dict[str, str] = field(default_factory=dict)


def summarize(samples: Iterable[Sample]) -> list[Figure]:
    """Median value per (system, broker, metric), in the order first measured."""
    groups: dict[tuple[str, str, str], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.system, sample.broker, sample.metric), []).append(sample)
    figures = []
    for (system, broker, metric), group in groups.items():
        ok = [s for s in group if s.value is not None]
        values = tuple(s.value for s in ok if s.value is not None)
        failures = tuple(s.error or "failed" for s in group if s.value is None)
        figures.append(
            Figure(
                system=system,
                broker=broker,
                metric=metric,
                jobs=max(s.jobs for s in group),
                value=statistics.median(values) if values else None,
                values=values,
                failures=failures,
                rounds=tuple(s.round for s in ok),
            )
        )
    return figures


_Index = dict[tuple[str, str, str], Figure]


def label(system: str, broker: str, metric: str) -> str:
    """``<system> on <broker>, <metric>`` for people."""
    return (
        f"{SYSTEM_LABELS.get(system, system)} on {BROKER_LABELS.get(broker, broker)}, "
        f"{_metric(metric).label}"
    )


def _best(index: _Index, systems: Sequence[str], broker: str, metric: str) -> Figure | None:
    """The best figure among ``systems`` (highest rate, or lowest ms/MiB)."""
    found = [
        f
        for s in systems
        if (f := index.get((s, broker, metric))) is not None and f.value is not None
    ]
    if not found:
        return None
    if _metric(metric).higher_is_better:
        return max(found, key=lambda f: f.value or 0.0)
    return min(found, key=lambda f: f.value or 0.0)


def _uno(index: _Index, broker: str, metric: str) -> Figure | None:
    """uno_jobs' figure: the best worker type for throughput; AsyncWorker otherwise
    (the worker type the latency and memory targets are about), else the best measured."""
    if metric == "throughput":
        return _best(index, _UNO_SYSTEMS, broker, metric)
    if metric.startswith("enq_"):
        return index.get(("uno", broker, metric))
    preferred = index.get(("uno_async", broker, metric))
    if preferred is not None and preferred.value is not None:
        return preferred
    return _best(index, _UNO_SYSTEMS, broker, metric)


def _peer(index: _Index, peer: str, broker: str, metric: str) -> Figure | None:
    if peer == "celery":
        return _best(index, _CELERY_SYSTEMS, broker, metric)
    if peer == "kombu" and metric == "throughput":
        return index.get(("kombu", broker, "consume_p100"))
    return index.get((peer, broker, metric))


def _by_round(fig: Figure) -> dict[int, float]:
    return dict(zip(fig.rounds, fig.values, strict=True))


def _divide(top: Figure | None, bottom: Figure | None) -> float | None:
    """The median over the rounds of the per-round ratio ``top / bottom``.

    Each round's two figures were measured minutes apart, so a slow stretch of the shared
    machine hits both; the median of the ratios keeps that pairing. Without a round that
    has both figures, the ratio of the medians.
    """
    if top is None or bottom is None or top.value is None or not bottom.value:
        return None
    tops, bottoms = _by_round(top), _by_round(bottom)
    paired = [tops[r] / bottoms[r] for r in tops if bottoms.get(r)]
    if paired:
        return statistics.median(paired)
    return top.value / bottom.value


def _added(idle: Figure, peak: Figure) -> float | None:
    """Median over the rounds of (peak - idle), or the difference of the medians."""
    idles, peaks = _by_round(idle), _by_round(peak)
    paired = [peaks[r] - idles[r] for r in peaks if r in idles]
    if paired:
        return statistics.median(paired)
    if idle.value is None or peak.value is None:
        return None
    return peak.value - idle.value


def compute_peer_ratios(figures: Sequence[Figure]) -> list[PeerRatios]:
    """uno_jobs ÷ each peer, per broker and metric, where uno_jobs has a figure."""
    index = {f.key: f for f in figures}
    rows = []
    for broker in ("redis", "amqp"):
        for metric in _RATIO_METRICS:
            uno = _uno(index, broker, metric)
            if uno is None:
                continue
            row = PeerRatios(broker, metric, uno.system)
            for peer in PEERS:
                bottom = _peer(index, peer, broker, metric)
                if bottom is not None and bottom.value is not None:
                    row.values[peer] = _divide(uno, bottom)
                    row.peer_systems[peer] = bottom.system
            if row.values:
                rows.append(row)
    return rows


def _ratio(
    text: str, top: Figure | None, bottom: Figure | None, target: float, at_most: bool = False
) -> Ratio:
    return Ratio(
        text,
        label(*top.key) if top else "(not measured)",
        label(*bottom.key) if bottom else "(not measured)",
        _divide(top, bottom),
        target,
        at_most,
    )


def _absolute(
    text: str, fig: Figure | None, value: float | None, target: float, unit: str
) -> Ratio:
    return Ratio(text, label(*fig.key) if fig else "(not measured)", "", value, target, True, unit)


def _throughput_targets(index: _Index, broker: str, dramatiq_target: float) -> list[Ratio]:
    uno = _uno(index, broker, "throughput")
    name = BROKER_LABELS[broker]
    return [
        _ratio(
            f"no-op throughput, uno_jobs best / Celery best, {name}",
            uno, _peer(index, "celery", broker, "throughput"), 2.0,
        ),
        _ratio(
            f"no-op throughput, uno_jobs best / Dramatiq, {name}",
            uno, index.get(("dramatiq", broker, "throughput")), dramatiq_target,
        ),
    ]  # fmt: skip


def _enqueue_targets(index: _Index, broker: str) -> list[Ratio]:
    name = BROKER_LABELS[broker]
    single = _uno(index, broker, "enq_single_conf")
    out = []
    if broker != "embedded":
        out.append(
            _ratio(
                f"confirmed enqueue (one by one), uno_jobs / Dramatiq, {name}",
                single, index.get(("dramatiq", broker, "enq_single_conf")), 1.0,
            )
        )  # fmt: skip
    out.append(
        _ratio(
            f"bulk enqueue / one-by-one enqueue, uno_jobs, {name}",
            _uno(index, broker, "enq_bulk_conf"), single, 5.0,
        )
    )  # fmt: skip
    return out


def _latency_memory_targets(index: _Index, broker: str) -> list[Ratio]:
    name = BROKER_LABELS[broker]
    out = []
    for pct in ("p50", "p99"):
        metric = f"latency_{pct}"
        out.append(
            _ratio(
                f"latency {pct}, uno_jobs / Dramatiq (both confirmed), {name}",
                _uno(index, broker, metric), index.get(("dramatiq", broker, metric)), 1.0, True,
            )
        )  # fmt: skip
    p99 = _uno(index, broker, "latency_p99")
    out.append(
        _absolute(f"latency p99, uno_jobs, {name}", p99, p99.value if p99 else None, 2.0, "ms")
    )
    idle = _uno(index, broker, "rss_idle")
    for peer, peer_name in (("celery", "Celery's smallest"), ("dramatiq", "Dramatiq")):
        out.append(
            _ratio(
                f"idle worker RSS, uno_jobs / {peer_name}, {name}",
                idle, _peer(index, peer, broker, "rss_idle"), 1.0, True,
            )
        )  # fmt: skip
    return out


def _backlog_target(index: _Index, broker: str) -> Ratio:
    idle = _uno(index, broker, "rss_idle")
    peak = index.get((idle.system, broker, "rss_backlog")) if idle else None
    added = _added(idle, peak) if idle and peak else None
    return _absolute(
        f"RSS added by the backlog (peak - idle), uno_jobs, {BROKER_LABELS[broker]}",
        peak, added, 50.0, "MiB",
    )  # fmt: skip


def compute_ratios(figures: Sequence[Figure]) -> list[Ratio]:
    """Every target of the benchmark issues, each from figures of this run: a ratio is
    the median over the rounds of the per-round ratio (``_divide``).

    A target whose figures were not measured in this run (a broker or system left out)
    is dropped, except the first (AsyncWorker vs raw kombu on RabbitMQ), which is always
    reported; one whose figures failed is reported as ``n/a``.
    """
    index = {f.key: f for f in figures}
    out = [
        _ratio(
            "AsyncWorker / raw kombu consume+ack (prefetch 100), RabbitMQ",
            index.get(("uno_async", "amqp", "throughput")),
            index.get(("kombu", "amqp", "consume_p100")),
            TARGET_RATIO,
        )
    ]
    brokers = {f.broker for f in figures}
    for broker, dramatiq_target in (("amqp", 1.5), ("redis", 1.2)):
        if broker in brokers:
            out += _throughput_targets(index, broker, dramatiq_target)
    for broker in ("embedded", "redis", "amqp"):
        if broker in brokers:
            out += _enqueue_targets(index, broker)
    for broker in ("redis", "amqp"):
        if broker in brokers:
            out += _latency_memory_targets(index, broker)
    for broker in ("embedded", "redis", "amqp"):
        if broker in brokers:
            out.append(_backlog_target(index, broker))
    measured = [r for r in out[1:] if "(not measured)" not in (r.numerator, r.denominator)]
    return [out[0], *measured]


def fmt_value(value: float | None, metric: str) -> str:
    """A figure in its metric's unit: rates as integers, ms and MiB with decimals."""
    if value is None:
        return "failed"
    unit = _metric(metric).unit
    if unit == "ms":
        return f"{value:.2f}"
    if unit == "MiB":
        return f"{value:.1f}"
    return f"{value:,.0f}"


def fmt_ratio(ratio: Ratio) -> str:
    """The value of a target: a ratio with two decimals, or the figure with its unit."""
    if ratio.value is None:
        return "n/a"
    return f"{ratio.value:.2f}{' ' + ratio.unit if ratio.unit else ''}"


HEADERS = ["system", "broker", "measure", "jobs", "median", "unit", "range"]


def figure_rows(figures: Sequence[Figure]) -> list[list[str]]:
    """One row of ``HEADERS`` per figure."""
    rows = []
    for f in figures:
        spread = ""
        if len(f.values) > 1:
            spread = f"{fmt_value(min(f.values), f.metric)}-{fmt_value(max(f.values), f.metric)}"
        if f.failures:
            spread = (spread + " " if spread else "") + f"({len(f.failures)} failed)"
        rows.append(
            [
                SYSTEM_LABELS.get(f.system, f.system),
                BROKER_LABELS.get(f.broker, f.broker),
                _metric(f.metric).label,
                f"{f.jobs:,}" if f.jobs else "",
                fmt_value(f.value, f.metric),
                _metric(f.metric).unit,
                spread,
            ]
        )
    return rows


def ratio_rows(rows: Sequence[PeerRatios]) -> list[list[str]]:
    """The ratio table as text cells: broker, measure, uno_jobs figure, one column per peer."""
    out = []
    for r in rows:
        cells = [
            BROKER_LABELS.get(r.broker, r.broker),
            _metric(r.metric).label + ("" if _metric(r.metric).higher_is_better else " (lower)"),
            SYSTEM_LABELS.get(r.uno, r.uno),
        ]
        for peer in PEERS:
            value = r.values.get(peer)
            system = r.peer_systems.get(peer)
            if system is None:
                cells.append("")
            elif value is None:
                cells.append("n/a")
            else:
                pool = f" ({SYSTEM_LABELS[system]})" if peer == "celery" else ""
                cells.append(f"{value:.2f}{pool}")
        out.append(cells)
    return out


RATIO_HEADERS = ["broker", "measure", "uno_jobs", "÷ Celery (best)", "÷ Dramatiq", "÷ raw kombu"]


def _text_table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def format_table(
    figures: Sequence[Figure],
    ratios: Sequence[Ratio],
    peer_ratios: Sequence[PeerRatios] = (),
) -> str:
    """Every figure, the ratio table (uno_jobs ÷ each peer), then the targets."""
    out = _text_table(HEADERS, figure_rows(figures), {3, 4})
    if peer_ratios:
        out += ["", "Ratios, uno_jobs ÷ each peer (same run; for 'lower' measures < 1 is better):"]
        out += _text_table(RATIO_HEADERS, ratio_rows(peer_ratios), set())
    out.append("")
    out.append("Targets (same run):")
    for r in ratios:
        verdict = f"  {r.verdict} (target {r.bound})" if r.target is not None else ""
        out.append(f"  {fmt_ratio(r):>9}  {r.label}{verdict}")
    for f in figures:
        for failure in f.failures:
            out.append(f"failed: {label(*f.key)}: {failure}")
    return "\n".join(out)


def to_json(
    samples: Sequence[Sample],
    figures: Sequence[Figure],
    ratios: Sequence[Ratio],
    meta: dict[str, Any],
    peer_ratios: Sequence[PeerRatios] = (),
) -> str:
    """Everything measured, as JSON: settings, raw samples, medians, ratios and targets."""
    doc = {
        "meta": meta,
        "samples": [{**asdict(s), "rate": s.rate, "value": s.value} for s in samples],
        "figures": [asdict(f) for f in figures],
        "peer_ratios": [asdict(r) for r in peer_ratios],
        "ratios": [{**asdict(r), "verdict": r.verdict} for r in ratios],
    }
    return json.dumps(doc, indent=2)
