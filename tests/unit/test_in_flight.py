"""``BaseWorker.in_flight`` on a stand-in worker (no broker): each message counted once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from uno_jobs.worker._base import BaseWorker


def in_flight(held: int | None, running: int = 0, buffered: int = 0, inbox: int = 0) -> Any:
    worker = SimpleNamespace(
        _consumer=None if held is None else SimpleNamespace(held=held),
        _running=dict.fromkeys(range(running)),
        _buffer=[object()] * buffered,
        _inbox=[object()] * inbox,
    )
    return BaseWorker.in_flight.fget(worker)  # type: ignore[attr-defined]


def test_a_delivery_in_the_inbox_is_one_message_not_two() -> None:
    # The consumer thread holds a delivery before it puts it in the inbox: a cluster
    # heartbeat taken in between once reported 2 for one message.
    assert in_flight(held=1, inbox=1) == 1
    assert in_flight(held=4, running=1, buffered=1, inbox=2) == 4


def test_outcomes_awaiting_their_ack_are_in_flight() -> None:
    assert in_flight(held=3) == 3


def test_running_jobs_count_when_a_new_connection_holds_none_of_them() -> None:
    assert in_flight(held=0, running=2, buffered=1) == 3
    assert in_flight(held=None, running=1, inbox=1) == 2
