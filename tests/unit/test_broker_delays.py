"""Which delays a broker holds itself (SQS ``DelaySeconds``) and how they are marked.

Nothing here connects; the SQS behaviour itself is in tests/integration/test_sqs.py.
"""

from __future__ import annotations

import time

import pytest

from uno_jobs.broker import Outgoing
from uno_jobs.broker._publisher import PublishSession
from uno_jobs.broker._spec import parse_broker_url
from uno_jobs.broker._sqs import MAX_DELAY_SECONDS, sqs_delay_seconds
from uno_jobs.message import Encoded, iso_from_timestamp, new_message
from uno_jobs.schedule import (
    BROKER_DELAY_HEADER,
    BROKER_DELAY_TOLERANCE_SECONDS,
    mark_broker_delay,
)
from uno_jobs.worker._base import _eta_tolerance, _future_eta


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        (0.001, 1),  # rounded up: never earlier than asked
        (1.0, 1),
        (2.0001, 3),
        (899.5, 900),
        (900.0, 900),
        (900.01, None),  # 901 whole seconds: over SQS's limit, the store's schedule
        (3600.0, None),
        (0.0, None),
        (-1.0, None),
    ],
)
def test_sqs_delay_seconds_rounds_up_and_stops_at_15_minutes(
    delay: float, seconds: int | None
) -> None:
    assert sqs_delay_seconds("q", delay) == seconds
    assert MAX_DELAY_SECONDS == 900


def test_a_fifo_queue_takes_no_per_message_delay() -> None:
    # SQS refuses DelaySeconds per message on a FIFO queue; kombu would drop it.
    assert sqs_delay_seconds("orders.fifo", 5) is None
    assert sqs_delay_seconds("orders.fifo.high", 5) == 5  # a standard queue (no .fifo end)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1//", "embedded://", "memory://"],
)
def test_only_sqs_holds_a_delay(url: str) -> None:
    assert parse_broker_url(url).delay_seconds("q", 5) is None
    assert parse_broker_url("sqs://k:s@127.0.0.1:1").delay_seconds("q", 4.2) == 5


def test_a_held_delay_goes_out_as_the_delayseconds_property() -> None:
    encoded = Encoded(b"[]", {"id": "j"}, {"correlation_id": "j"}, "application/json", "utf-8")
    assert Outgoing("q", encoded).wire_encoded() is encoded
    held = Outgoing("q", encoded, 7).wire_encoded()
    assert held.properties == {"correlation_id": "j", "DelaySeconds": 7}
    assert encoded.properties == {"correlation_id": "j"}, "the original is left alone"
    assert (held.body, held.headers) == (encoded.body, encoded.headers)


def test_a_held_delay_on_a_broker_that_cannot_hold_one_is_refused_before_sending() -> None:
    session = PublishSession(parse_broker_url("memory://"))
    encoded = Encoded(b"[]", {"id": "j"}, {}, "application/json", "utf-8")
    with pytest.raises(ValueError, match=r"queue 'q' cannot hold a message back \(5 s asked\)"):
        session.publish([Outgoing("q", encoded, 5)])
    session.close()


def test_mark_broker_delay_sets_and_clears_the_header() -> None:
    headers: dict[str, object] = {"traceparent": "x"}
    mark_broker_delay(headers, 12)
    assert headers == {"traceparent": "x", BROKER_DELAY_HEADER: 12}
    mark_broker_delay(headers, None)  # a retry that waits in the store instead
    assert headers == {"traceparent": "x"}
    mark_broker_delay(headers, None)
    assert headers == {"traceparent": "x"}


def test_a_broker_held_message_runs_when_its_eta_is_within_the_tolerance() -> None:
    message = new_message("t", [], {}, queue="q")
    assert _eta_tolerance(message) == 0.0
    message.extra_headers[BROKER_DELAY_HEADER] = 3
    assert _eta_tolerance(message) == BROKER_DELAY_TOLERANCE_SECONDS == 1.0

    soon = iso_from_timestamp(time.time() + 0.5)
    assert _future_eta(soon) is not None, "an unmarked eta is waited for exactly"
    assert _future_eta(soon, BROKER_DELAY_TOLERANCE_SECONDS) is None
    later = time.time() + 30
    due = _future_eta(iso_from_timestamp(later), BROKER_DELAY_TOLERANCE_SECONDS)
    assert due == pytest.approx(later, abs=1e-3), "further ahead it is deferred as before"
    assert _future_eta(iso_from_timestamp(time.time() - 1)) is None
    assert _future_eta(None, 1.0) is None
