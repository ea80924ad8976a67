"""The benchmark's pure parts: report arithmetic and formatting, targets, percentiles,
``/proc`` parsing, the generated docs section (no broker, no subprocess)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

# ``benchmarks`` is not an installed package: import it from the repository root. Only
# modules that register no tasks are imported here (not bench_tasks, not the runners).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import _docs, _latency, _memory, report  # noqa: E402

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
    assert figure.value == figure.rate == 200
    assert sorted(figure.values) == [100, 200, 400]
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


def _amount(system: str, broker: str, metric: str, value: float, round_no: int = 1) -> Any:
    return Sample(system, broker, metric, 0, None, round_no, amount=value)


def test_target_is_reported_unmeasured_and_other_ratios_are_dropped() -> None:
    ratios = report.compute_ratios(report.summarize(_samples(uno_sync__redis__throughput=1)))
    assert [(r.verdict, r.value) for r in ratios] == [("n/a", None)]


def test_throughput_targets_take_the_best_uno_worker_and_celerys_best_pool() -> None:
    figures = report.summarize(
        _samples(
            uno_sync__redis__throughput=900,
            uno_async__redis__throughput=2400,
            celery__redis__throughput=600,
            celery_prefork__redis__throughput=1200,
            dramatiq__redis__throughput=2000,
        )
    )
    ratios = _by_label(report.compute_ratios(figures))
    celery = ratios["no-op throughput, uno_jobs best / Celery best, Redis"]
    dramatiq = ratios["no-op throughput, uno_jobs best / Dramatiq, Redis"]
    assert (celery.value, celery.target, celery.verdict) == (pytest.approx(2.0), 2.0, "PASS")
    assert "Celery prefork(1)" in celery.denominator
    assert (dramatiq.value, dramatiq.target, dramatiq.verdict) == (1.2, 1.2, "PASS")
    (row,) = report.compute_peer_ratios(figures)
    assert row.uno == "uno_async" and row.peer_systems["celery"] == "celery_prefork"
    assert row.values["dramatiq"] == pytest.approx(1.2)


def test_dramatiq_throughput_target_is_higher_on_rabbitmq() -> None:
    figures = report.summarize(
        _samples(uno_async__amqp__throughput=1400, dramatiq__amqp__throughput=1000)
    )
    ratio = _by_label(report.compute_ratios(figures))[
        "no-op throughput, uno_jobs best / Dramatiq, RabbitMQ"
    ]
    assert (ratio.target, ratio.verdict) == (1.5, "FAIL")


def test_enqueue_targets_compare_confirmed_rates_and_bulk_over_single() -> None:
    figures = report.summarize(
        _samples(
            uno__amqp__enq_single_conf=1000,
            uno__amqp__enq_bulk_conf=4999,
            dramatiq__amqp__enq_single_conf=800,
            dramatiq__amqp__enq_single_unconf=4000,
        )
    )
    ratios = _by_label(report.compute_ratios(figures))
    confirmed = ratios["confirmed enqueue (one by one), uno_jobs / Dramatiq, RabbitMQ"]
    assert (confirmed.value, confirmed.verdict) == (pytest.approx(1.25), "PASS")
    bulk = ratios["bulk enqueue / one-by-one enqueue, uno_jobs, RabbitMQ"]
    assert (bulk.value, bulk.verdict) == (pytest.approx(4.999), "FAIL")


def test_latency_and_memory_targets_are_at_most_bounds() -> None:
    samples = [
        _amount("uno_async", "redis", "latency_p50", 1.0),
        _amount("uno_async", "redis", "latency_p99", 2.5),
        _amount("dramatiq", "redis", "latency_p50", 1.0),
        _amount("dramatiq", "redis", "latency_p99", 3.0),
        _amount("uno_async", "redis", "rss_idle", 50.0),
        _amount("uno_async", "redis", "rss_backlog", 100.5),
        _amount("celery", "redis", "rss_idle", 60.0),
        _amount("celery_prefork", "redis", "rss_idle", 150.0),
        _amount("dramatiq", "redis", "rss_idle", 45.0),
    ]
    ratios = _by_label(report.compute_ratios(report.summarize(samples)))
    verdicts = {k: (r.value, r.verdict) for k, r in ratios.items()}
    assert verdicts["latency p50, uno_jobs / Dramatiq (both confirmed), Redis"] == (1.0, "PASS")
    p99 = ratios["latency p99, uno_jobs, Redis"]
    assert (p99.value, p99.verdict, p99.bound) == (2.5, "FAIL", "<= 2.00 ms")
    celery = ratios["idle worker RSS, uno_jobs / Celery's smallest, Redis"]
    assert celery.value == pytest.approx(50 / 60) and "Celery solo" in celery.denominator
    assert ratios["idle worker RSS, uno_jobs / Dramatiq, Redis"].verdict == "FAIL"
    added = ratios["RSS added by the backlog (peak - idle), uno_jobs, Redis"]
    assert (added.value, added.verdict) == (50.5, "FAIL")


def test_a_failed_sample_has_no_value_even_with_an_amount() -> None:
    failed = Sample("uno_async", "redis", "rss_idle", 0, None, error="worker exited")
    assert failed.value is None
    (figure,) = report.summarize([failed, _amount("uno_async", "redis", "rss_idle", 40.0, 2)])
    assert (figure.value, figure.failures) == (40.0, ("worker exited",))


def test_outputs_carry_every_figure_and_the_verdict() -> None:
    samples = _samples(uno_async__amqp__throughput=3000, kombu__amqp__consume_p100=5000)
    samples.append(Sample("celery", "amqp", "throughput", 1000, None, error="worker exited"))
    samples.append(_amount("uno_async", "amqp", "latency_p99", 1.234))
    figures = report.summarize(samples)
    ratios = report.compute_ratios(figures)
    peers = report.compute_peer_ratios(figures)
    table = report.format_table(figures, ratios, peers)
    assert "3,000" in table and "5,000" in table and "1.23  ms" in table
    assert "0.60  AsyncWorker / raw kombu" in table and "PASS (target >= 0.50)" in table
    assert "failed: Celery solo on RabbitMQ" in table and "worker exited" in table
    assert "÷ raw kombu" in table
    meta = {"command": "python -m benchmarks.run --rounds 5", "versions": {"kombu": "5.7.0"}}
    section = _docs.render_section(figures, ratios, peers, meta, "benchmarks.png")
    assert section.startswith(_docs.BEGIN) and section.rstrip().endswith(_docs.END)
    assert "python -m benchmarks.run --rounds 5" in section and "kombu 5.7.0" in section
    assert "| AsyncWorker / raw kombu consume+ack (prefetch 100), RabbitMQ | 0.60 |" in section
    assert "![benchmark figures](benchmarks.png)" in section
    doc = json.loads(report.to_json(samples, figures, ratios, meta, peers))
    assert [s["value"] for s in doc["samples"]] == [3000, 5000, None, 1.234]
    assert doc["ratios"][0]["verdict"] == "PASS"


def test_splice_replaces_only_the_generated_section() -> None:
    first = _docs.render_section([], [], [], {"command": "one"}, None)
    doc = _docs.splice("# Benchmarks\n\nIntro.\n\n## Hand-written\n\nKept.\n", first)
    assert doc.index("Intro.") < doc.index(_docs.BEGIN) < doc.index("## Hand-written")
    second = _docs.render_section([], [], [], {"command": "two"}, None)
    again = _docs.splice(doc, second)
    assert again.count(_docs.BEGIN) == 1 and "two" in again and "\none\n" not in again
    assert again.endswith("## Hand-written\n\nKept.\n")


@pytest.mark.parametrize(
    ("pct", "expected"), [(0, 1.0), (50, 5.0), (99, 10.0), (100, 10.0), (90, 9.0)]
)
def test_percentile_is_nearest_rank(pct: float, expected: float) -> None:
    values = [float(v) for v in range(10, 0, -1)]
    assert _latency.percentile(values, pct) == expected


def test_percentile_refuses_no_values_and_bad_percentiles() -> None:
    with pytest.raises(ValueError, match="no values"):
        _latency.percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        _latency.percentile([1.0], 101)


def test_paced_send_keeps_the_schedule_and_passes_the_send_time() -> None:
    sent: list[int] = []
    result = _latency.paced_send(sent.append, 5, 0.001)
    assert len(sent) == 5 and sent == sorted(sent)
    assert set(result) == {"late_seconds", "call_p50_ms", "call_p99_ms"}


def test_parse_kib_reads_a_proc_field() -> None:
    status = "Name:\tpython\nVmRSS:\t   53412 kB\nThreads:\t4\n"
    assert _memory.parse_kib(status, "VmRSS") == 53412
    assert _memory.parse_kib(status, "Pss") is None


def test_tree_memory_counts_this_process() -> None:
    mem = _memory.tree_memory(os.getpid())
    assert mem.processes >= 1 and mem.rss_mib > 1 and mem.pss_mib > 0


def _soak(seconds: float, rss: float) -> Any:
    return _memory.SoakSample(seconds, rss, rss, 0, 0)


def test_soak_growth_starts_after_the_warmup_and_takes_the_highest_later_sample() -> None:
    samples = [_soak(0, 10), _soak(60, 50), _soak(120, 100), _soak(180, 111), _soak(240, 105)]
    assert _memory.growth_after_warmup(samples, 120) == pytest.approx(0.11)
    assert _memory.growth_after_warmup(samples, 200) is None


def test_resp_commands_are_arrays_of_bulk_strings() -> None:
    from benchmarks import _resp

    assert _resp.encode_command("RPUSH", "k", 12) == b"*3\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert _resp.encode_command("SET", b"\xff") == b"*2\r\n$3\r\nSET\r\n$1\r\n\xff\r\n"


def test_a_target_is_the_median_of_the_per_round_ratios() -> None:
    rounds = [(1, 1000, 500), (2, 3000, 1000), (3, 2000, 2000)]  # ratios 2, 3, 1
    samples = []
    for round_no, uno, dramatiq in rounds:
        samples.append(Sample("uno_async", "amqp", "throughput", uno, 1.0, round_no))
        samples.append(Sample("dramatiq", "amqp", "throughput", dramatiq, 1.0, round_no))
    ratios = _by_label(report.compute_ratios(report.summarize(samples)))
    # Medians 2000 / 1000, ratios 2, 3, 1: both ways give 2.0 so far.
    ratio = ratios["no-op throughput, uno_jobs best / Dramatiq, RabbitMQ"]
    assert ratio.value == pytest.approx(2.0)
    samples.append(Sample("uno_async", "amqp", "throughput", 10, 1.0, 4))
    samples.append(Sample("dramatiq", "amqp", "throughput", 1, 1.0, 4))  # ratio 10
    samples.append(Sample("uno_async", "amqp", "throughput", 1, None, 5, error="stalled"))
    samples.append(Sample("dramatiq", "amqp", "throughput", 1000, 1.0, 5))  # unpaired
    ratios = _by_label(report.compute_ratios(report.summarize(samples)))
    ratio = ratios["no-op throughput, uno_jobs best / Dramatiq, RabbitMQ"]
    # The median of the paired ratios 2, 3, 1, 10; the ratio of the medians is 1.5.
    assert ratio.value == pytest.approx(2.5)


def test_backlog_added_is_paired_by_round() -> None:
    samples = [
        _amount("uno_async", "redis", "rss_idle", 50.0, 1),
        _amount("uno_async", "redis", "rss_backlog", 52.0, 1),
        _amount("uno_async", "redis", "rss_idle", 60.0, 2),
        _amount("uno_async", "redis", "rss_backlog", 70.0, 2),
        _amount("uno_async", "redis", "rss_idle", 55.0, 3),
    ]
    ratios = _by_label(report.compute_ratios(report.summarize(samples)))
    added = ratios["RSS added by the backlog (peak - idle), uno_jobs, Redis"]
    assert added.value == pytest.approx(6.0)  # median of 2 and 10
