"""Medians, ratios and the printed, JSON and markdown reports of a benchmark run.

Pure functions over ``Sample`` values: no broker, no subprocess, so the unit tests can
check the arithmetic and the formatting. Every ratio is computed from figures of the same
run (medians over its rounds), never from numbers remembered from another run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "BROKER_LABELS",
    "SYSTEM_LABELS",
    "TARGET_RATIO",
    "Figure",
    "Ratio",
    "Sample",
    "compute_ratios",
    "format_markdown",
    "format_table",
    "summarize",
    "to_json",
]

#: AsyncWorker on RabbitMQ must reach this share of raw kombu consume+ack there.
TARGET_RATIO = 0.50

SYSTEM_LABELS: dict[str, str] = {
    "uno_sync": "uno_jobs SyncWorker",
    "uno_thread": "uno_jobs ThreadPoolWorker(8)",
    "uno_async": "uno_jobs AsyncWorker(50)",
    "uno_process": "uno_jobs ProcessPoolWorker(2)",
    "kombu": "raw kombu",
    "celery": "Celery solo",
    "dramatiq": "Dramatiq 1p x 8t",
}
BROKER_LABELS: dict[str, str] = {"embedded": "embedded", "redis": "Redis", "amqp": "RabbitMQ"}
METRIC_LABELS: dict[str, str] = {
    "enqueue": "enqueue",
    "throughput": "process (worker)",
    "publish": "publish, no confirms",
    "consume_p100": "consume+ack, prefetch 100",
    "consume_p150": "consume+ack, prefetch 150",
}

_UNO_SYSTEMS = ("uno_sync", "uno_thread", "uno_async", "uno_process")
_PEERS = ("celery", "dramatiq")


@dataclass(frozen=True)
class Sample:
    """One measured rate of one round.

    Attributes:
        system: ``uno_sync``, ``uno_async``, ``kombu``, ``celery`` or ``dramatiq``.
        broker: ``embedded``, ``redis`` or ``amqp``.
        metric: ``enqueue``, ``throughput``, ``publish``, ``consume_p100``, ...
        jobs: Messages or jobs the rate was measured over.
        seconds: Elapsed seconds, or ``None`` when the measurement failed.
        round: Round number, from 1.
        error: Why the measurement failed, if it did.
    """

    system: str
    broker: str
    metric: str
    jobs: int
    seconds: float | None
    round: int = 1
    error: str | None = None

    @property
    def rate(self) -> float | None:
        """Jobs (or messages) per second; ``None`` if failed or not measurable."""
        if self.seconds is None or self.seconds <= 0:
            return None
        return self.jobs / self.seconds


@dataclass(frozen=True)
class Figure:
    """The median rate of one (system, broker, metric) over the rounds of a run."""

    system: str
    broker: str
    metric: str
    jobs: int
    rate: float | None
    rates: tuple[float, ...] = ()
    failures: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.system, self.broker, self.metric)


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` of two figures of the same run.

    Attributes:
        label: What the ratio compares, for people.
        numerator: Label of the figure on top.
        denominator: Label of the figure below.
        value: The ratio, or ``None`` when either figure is missing.
        target: The value it must reach, if this ratio is a goal.
    """

    label: str
    numerator: str
    denominator: str
    value: float | None
    target: float | None = None

    @property
    def verdict(self) -> str:
        """``PASS``/``FAIL`` against the target, ``n/a`` if unmeasured, else empty."""
        if self.target is None:
            return ""
        if self.value is None:
            return "n/a"
        return "PASS" if self.value >= self.target else "FAIL"


def summarize(samples: Iterable[Sample]) -> list[Figure]:
    """Median rate per (system, broker, metric), in the order first measured."""
    groups: dict[tuple[str, str, str], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.system, sample.broker, sample.metric), []).append(sample)
    figures = []
    for (system, broker, metric), group in groups.items():
        rates = tuple(r for r in (s.rate for s in group) if r is not None)
        failures = tuple(s.error or "failed" for s in group if s.rate is None)
        figures.append(
            Figure(
                system=system,
                broker=broker,
                metric=metric,
                jobs=max(s.jobs for s in group),
                rate=statistics.median(rates) if rates else None,
                rates=rates,
                failures=failures,
            )
        )
    return figures


def _label(system: str, broker: str, metric: str) -> str:
    return (
        f"{SYSTEM_LABELS.get(system, system)} on {BROKER_LABELS.get(broker, broker)}, "
        f"{METRIC_LABELS.get(metric, metric)}"
    )


def _ratio(
    figures: dict[tuple[str, str, str], Figure],
    label: str,
    top: tuple[str, str, str],
    bottom: tuple[str, str, str],
    target: float | None = None,
) -> Ratio:
    num, den = figures.get(top), figures.get(bottom)
    value = None
    if num and den and num.rate is not None and den.rate:
        value = num.rate / den.rate
    return Ratio(label, _label(*top), _label(*bottom), value, target)


def _best_uno(figures: dict[tuple[str, str, str], Figure], broker: str) -> Figure | None:
    candidates = [
        f
        for s in _UNO_SYSTEMS
        if (f := figures.get((s, broker, "throughput"))) is not None and f.rate is not None
    ]
    return max(candidates, key=lambda f: f.rate or 0.0, default=None)


def compute_ratios(figures: Sequence[Figure]) -> list[Ratio]:
    """The ratios that matter, each from figures of this run (see the README)."""
    by_key = {f.key: f for f in figures}
    ratios = [
        _ratio(
            by_key,
            "AsyncWorker / raw kombu consume+ack (prefetch 100), RabbitMQ",
            ("uno_async", "amqp", "throughput"),
            ("kombu", "amqp", "consume_p100"),
            TARGET_RATIO,
        ),
        _ratio(
            by_key,
            "AsyncWorker / raw kombu consume+ack (prefetch 150 = its window), RabbitMQ",
            ("uno_async", "amqp", "throughput"),
            ("kombu", "amqp", "consume_p150"),
        ),
        _ratio(
            by_key,
            "AsyncWorker / raw kombu consume+ack (prefetch 100), Redis",
            ("uno_async", "redis", "throughput"),
            ("kombu", "redis", "consume_p100"),
        ),
    ]
    for broker in ("redis", "amqp"):
        best = _best_uno(by_key, broker)
        if best is None:
            continue
        for peer in _PEERS:
            ratios.append(
                _ratio(
                    by_key,
                    f"uno_jobs best ({SYSTEM_LABELS[best.system]}) / "
                    f"{SYSTEM_LABELS[peer]}, {BROKER_LABELS[broker]}",
                    best.key,
                    (peer, broker, "throughput"),
                )
            )
    # The target is always reported; the other ratios only where both figures exist.
    return [r for r in ratios if r.target is not None or r.value is not None]


def _fmt_rate(rate: float | None) -> str:
    return "failed" if rate is None else f"{rate:,.0f}"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _rows(figures: Sequence[Figure]) -> list[list[str]]:
    rows = []
    for f in figures:
        spread = ""
        if len(f.rates) > 1:
            spread = f"{min(f.rates):,.0f}-{max(f.rates):,.0f}"
        if f.failures:
            spread = (spread + " " if spread else "") + f"({len(f.failures)} failed)"
        rows.append(
            [
                SYSTEM_LABELS.get(f.system, f.system),
                BROKER_LABELS.get(f.broker, f.broker),
                METRIC_LABELS.get(f.metric, f.metric),
                f"{f.jobs:,}",
                _fmt_rate(f.rate),
                spread,
            ]
        )
    return rows


_HEADERS = ["system", "broker", "measure", "jobs", "per second (median)", "range"]


def format_table(figures: Sequence[Figure], ratios: Sequence[Ratio]) -> str:
    """A plain-text table of every rate, then the ratios with their verdicts."""
    rows = _rows(figures)
    widths = [max(len(r[i]) for r in [_HEADERS, *rows]) for i in range(len(_HEADERS))]
    numeric = {3, 4}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(_HEADERS), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append("")
    out.append("Ratios (same run):")
    for r in ratios:
        verdict = f"  {r.verdict} (target >= {r.target:.2f})" if r.target is not None else ""
        out.append(f"  {_fmt_ratio(r.value):>6}  {r.label}{verdict}")
    for f in figures:
        for failure in f.failures:
            out.append(f"failed: {_label(*f.key)}: {failure}")
    return "\n".join(out)


def format_markdown(
    figures: Sequence[Figure], ratios: Sequence[Ratio], meta: dict[str, Any]
) -> str:
    """The same report as markdown tables, headed by the run's settings."""
    settings = ", ".join(f"{k}={v}" for k, v in meta.items())
    out = [f"Run: {settings}", "", "| " + " | ".join(_HEADERS) + " |"]
    out.append("|" + "|".join(["---", "---", "---", "---:", "---:", "---"]) + "|")
    out += ["| " + " | ".join(r) + " |" for r in _rows(figures)]
    out += ["", "| ratio (same run) | value | target |", "|---|---:|---|"]
    for r in ratios:
        target = f"≥ {r.target:.2f}: **{r.verdict}**" if r.target is not None else ""
        out.append(f"| {r.label} | {_fmt_ratio(r.value)} | {target} |")
    return "\n".join(out) + "\n"


def to_json(
    samples: Sequence[Sample],
    figures: Sequence[Figure],
    ratios: Sequence[Ratio],
    meta: dict[str, Any],
) -> str:
    """Everything measured, as JSON: settings, raw samples, medians and ratios."""
    doc = {
        "meta": meta,
        "samples": [{**asdict(s), "rate": s.rate} for s in samples],
        "figures": [asdict(f) for f in figures],
        "ratios": [{**asdict(r), "verdict": r.verdict} for r in ratios],
    }
    return json.dumps(doc, indent=2)
