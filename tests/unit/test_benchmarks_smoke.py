"""The benchmark report's arithmetic and formatting (no broker, no subprocess)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "report.py"


def _load() -> ModuleType:
    # Loaded from its file: ``benchmarks`` is not an installed package, and importing the
    # rest of it would register the benchmark tasks in the default registry.
    spec = importlib.util.spec_from_file_location("bench_report_under_test", _REPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


report = _load()
Sample = report.Sample


def _samples(**rates: float) -> list[Any]:
    """One round of samples at the given rates (1,000 jobs each)."""
    out = []
    for key, rate in rates.items():
        system, broker, metric = key.split("__")
        out.append(Sample(system, broker, metric, 1000, 1000 / rate))
    return out


def _by_label(ratios: list[Any]) -> dict[str, Any]:
    return {r.label: r for r in ratios}


def test_rate_is_jobs_per_second_and_none_when_failed() -> None:
    assert Sample("kombu", "amqp", "publish", 10_000, 2.0).rate == 5000
    assert Sample("kombu", "amqp", "publish", 10_000, None, error="boom").rate is None


def test_summarize_takes_the_median_over_rounds_and_keeps_failures() -> None:
    samples = [
        Sample("celery", "redis", "throughput", 100, 1.0, round=1),  # 100/s
        Sample("celery", "redis", "throughput", 100, 0.25, round=2),  # 400/s
        Sample("celery", "redis", "throughput", 100, 0.5, round=3),  # 200/s
        Sample("celery", "redis", "throughput", 100, None, round=4, error="stalled"),
    ]
    (figure,) = report.summarize(samples)
    assert figure.rate == 200
    assert sorted(figure.rates) == [100, 200, 400]
    assert figure.failures == ("stalled",)


@pytest.mark.parametrize(("async_rate", "verdict"), [(2500, "PASS"), (2499, "FAIL")])
def test_target_ratio_is_async_worker_over_kombu_on_rabbitmq(
    async_rate: float, verdict: str
) -> None:
    figures = report.summarize(
        _samples(uno_async__amqp__throughput=async_rate, kombu__amqp__consume_p100=5000)
    )
    target = next(r for r in report.compute_ratios(figures) if r.target is not None)
    assert target.value == pytest.approx(async_rate / 5000)
    assert target.verdict == verdict


def test_target_is_reported_unmeasured_and_other_ratios_are_dropped() -> None:
    ratios = report.compute_ratios(report.summarize(_samples(uno_sync__redis__throughput=1)))
    assert [(r.verdict, r.value) for r in ratios] == [("n/a", None)]


def test_uno_jobs_best_of_sync_and_async_over_each_peer() -> None:
    figures = report.summarize(
        _samples(
            uno_sync__redis__throughput=900,
            uno_async__redis__throughput=1200,
            celery__redis__throughput=600,
            dramatiq__redis__throughput=2400,
        )
    )
    ratios = _by_label(report.compute_ratios(figures))
    celery = ratios["uno_jobs best (uno_jobs AsyncWorker(50)) / Celery solo, Redis"]
    dramatiq = ratios["uno_jobs best (uno_jobs AsyncWorker(50)) / Dramatiq 1p x 8t, Redis"]
    assert celery.value == pytest.approx(2.0)
    assert dramatiq.value == pytest.approx(0.5)


def test_outputs_carry_every_rate_and_the_verdict() -> None:
    samples = _samples(uno_async__amqp__throughput=3000, kombu__amqp__consume_p100=5000)
    samples.append(Sample("celery", "amqp", "throughput", 1000, None, error="worker exited"))
    figures = report.summarize(samples)
    ratios = report.compute_ratios(figures)
    table = report.format_table(figures, ratios)
    assert "3,000" in table and "5,000" in table
    assert "0.60  AsyncWorker / raw kombu" in table and "PASS (target >= 0.50)" in table
    assert "failed: Celery solo on RabbitMQ" in table and "worker exited" in table
    markdown = report.format_markdown(figures, ratios, {"jobs": 1000})
    assert markdown.startswith("Run: jobs=1000")
    assert "| 0.60 | ≥ 0.50: **PASS** |" in markdown
    doc = json.loads(report.to_json(samples, figures, ratios, {"jobs": 1000}))
    assert [s["rate"] for s in doc["samples"]] == [3000, 5000, None]
    assert doc["ratios"][0]["verdict"] == "PASS"
