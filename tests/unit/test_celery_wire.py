"""Interop with real Celery: its messages decode with ours, ours run on its worker code.

No broker: Celery's producer side is ``app.amqp.as_task_v2`` (what ``send_task`` builds)
and ``send_task`` over kombu's in-process ``memory://`` transport; Celery's worker side is
the task's start strategy (what the worker's consumer calls for every delivery), the
``Request`` it builds, and ``trace_task_ret`` (what a prefork child runs: it deserialises
the body with Celery's ``accept_content`` and calls the task).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from unittest.mock import Mock

import pytest

celery = pytest.importorskip("celery")
kombu = pytest.importorskip("kombu")

from celery.worker import state as worker_state  # noqa: E402
from kombu.serialization import dumps as _kombu_dumps  # noqa: E402

from uno_jobs.errors import MessageError  # noqa: E402
from uno_jobs.message import Message, decode, encode, new_message  # noqa: E402

TASK = "wire.record"
kombu_dumps: Any = _kombu_dumps  # untyped in kombu


class _Recorder:
    """What the Celery task saw when it ran."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []


@pytest.fixture
def recorder() -> _Recorder:
    return _Recorder()


@pytest.fixture
def app(recorder: _Recorder) -> Iterator[Any]:
    app = celery.Celery("wire", set_as_current=False, broker="memory://")
    app.conf.broker_connection_retry_on_startup = False

    @app.task(name=TASK, bind=True, shared=False)  # type: ignore[untyped-decorator]
    def record(self: Any, *args: Any, **kwargs: Any) -> str:
        r = self.request
        recorder.calls.append(
            {
                "args": list(args),
                "kwargs": kwargs,
                "id": r.id,
                "retries": r.retries,
                "root_id": r.root_id,
                "parent_id": r.parent_id,
                "group": r.group,
                "timelimit": r.timelimit,
                "origin": r.origin,
                "eta": r.eta,
                "expires": r.expires,
                "traceparent": getattr(r, "traceparent", None),
            }
        )
        return "done"

    yield app
    app.close()


@pytest.fixture
def queue_name() -> Iterator[str]:
    name = f"wire-{uuid.uuid4().hex}"
    yield name
    with kombu.Connection("memory://") as conn:
        conn.default_channel.queue_delete(name)


def _iso_in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- Celery produces, uno_jobs decodes -----------------------------------------------


def _decode_celery(app: Any, **options: Any) -> tuple[Any, Message]:
    """Build a message with Celery's producer code and decode it with ours."""
    task_id = options.pop("task_id", str(uuid.uuid4()))
    args = options.pop("args", ())
    kwargs = options.pop("kwargs", {})
    built = app.amqp.as_task_v2(task_id, TASK, args, kwargs, **options)
    content_type, content_encoding, body = kombu_dumps(built.body, serializer="json")
    message = decode(body, built.headers, content_type, content_encoding, queue="default")
    return built, message


def test_plain_celery_message_decodes(app: Any) -> None:
    built, message = _decode_celery(app, task_id="c-1", args=(1, "two"), kwargs={"k": [3]})
    assert (message.task, message.id) == (TASK, "c-1")
    assert (message.args, message.kwargs) == ([1, "two"], {"k": [3]})
    assert message.retries == 0 and message.attempt == 1
    assert message.root_id == "c-1" and message.parent_id is None
    assert (message.eta, message.expires) == (None, None)
    assert (message.time_limit, message.soft_time_limit) == (None, None)
    assert message.origin == built.headers["origin"]
    assert message.enqueued_at is None and message.worker_lost == 0
    assert message.priority == "normal" and message.queue == "default"
    assert message.embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_celery_message_with_every_option_decodes(app: Any) -> None:
    eta = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    built, message = _decode_celery(
        app,
        task_id="c-2",
        args=[{"nested": [1, None]}],
        kwargs={"flag": True},
        eta=eta,
        expires=3600,
        retries=4,
        time_limit=60,
        soft_time_limit=45,
        root_id="root-x",
        parent_id="parent-y",
        group_id="group-z",
        group_index=3,
        shadow="shown-name",
        ignore_result=True,
        argsrepr="(<secret>,)",
    )
    assert message.retries == 4 and message.attempt == 5
    assert message.eta is not None and _parse(message.eta) == eta
    assert message.expires == built.headers["expires"]
    assert message.expires is not None
    assert _parse(message.expires) > datetime.now(timezone.utc) + timedelta(minutes=59)
    assert (message.time_limit, message.soft_time_limit) == (60, 45)
    assert (message.root_id, message.parent_id, message.group) == ("root-x", "parent-y", "group-z")
    # Celery's own headers without a field are kept and go back out unchanged.
    again = encode(message).headers
    for key in ("shadow", "group_index", "ignore_result", "argsrepr", "stamps", "lang"):
        assert again[key] == built.headers[key], key
    assert again["timelimit"] == [60, 45]


def test_celery_countdown_becomes_an_eta(app: Any) -> None:
    before = datetime.now(timezone.utc)
    _, message = _decode_celery(app, countdown=30)
    assert message.eta is not None
    eta = _parse(message.eta)
    assert before + timedelta(seconds=29) < eta < before + timedelta(seconds=60)


def test_celery_send_task_through_a_transport_decodes(app: Any, queue_name: str) -> None:
    when = datetime(2024, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    ident = uuid.UUID(int=42)
    result = app.send_task(
        TASK,
        args=[when, Decimal("9.99"), ident, "plain"],
        kwargs={"blob": b"bytes"},
        queue=queue_name,
        countdown=10,
        expires=120,
        retries=1,
        time_limit=30,
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    with kombu.Connection("memory://") as conn:
        raw = conn.default_channel.basic_get(queue_name, no_ack=True)
    assert raw is not None
    message = decode(
        raw.body, raw.headers, raw.content_type, raw.content_encoding, queue=queue_name
    )
    assert (message.id, message.task) == (result.id, TASK)
    # kombu's JSON carries these as typed markers; we read them as a Celery worker would.
    assert message.args == [when, Decimal("9.99"), ident, "plain"]
    assert message.kwargs == {"blob": b"bytes"}
    assert message.retries == 1
    assert message.time_limit == 30 and message.soft_time_limit is None
    assert message.eta is not None and message.expires is not None
    assert message.extra_headers["traceparent"].startswith("00-0af7")


def test_celery_protocol_v1_is_refused(app: Any) -> None:
    built = app.amqp.as_task_v1("v1-id", TASK, (1,), {})
    content_type, content_encoding, body = kombu_dumps(built.body, serializer="json")
    with pytest.raises(MessageError) as info:
        decode(body, built.headers, content_type, content_encoding, queue="q")
    assert info.value.reason == "invalid_message"
    assert "protocol v1" in info.value.detail


def test_celery_pickle_message_is_refused(app: Any) -> None:
    built = app.amqp.as_task_v2("p-id", TASK, (1,), {})
    content_type, content_encoding, body = kombu_dumps(built.body, serializer="pickle")
    with pytest.raises(MessageError) as info:
        decode(body, built.headers, content_type, content_encoding, queue="q")
    assert (info.value.reason, info.value.job_id) == ("content_type_disallowed", "p-id")


# --- uno_jobs encodes, Celery's worker code runs it ----------------------------------


class _Pool:
    """Stands in for the worker's execution pool: keeps what would go to a child."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def apply_async(self, target: Any, args: tuple[Any, ...] = (), **options: Any) -> None:
        self.jobs.append((target, args, options))


def _deliver(message: Message, queue_name: str) -> Any:
    """Publish our encoding over kombu's memory transport and receive it back."""
    enc = encode(message)
    with kombu.Connection("memory://") as conn:
        channel = conn.default_channel
        kombu.Queue(queue_name, channel=channel).declare()
        kombu.Producer(channel).publish(
            enc.body,
            routing_key=queue_name,
            headers=enc.headers,
            content_type=enc.content_type,
            content_encoding=enc.content_encoding,
            **enc.properties,
        )
        raw = channel.basic_get(queue_name, no_ack=True)
    assert raw is not None
    return raw


def _celery_receives(app: Any, raw: Any) -> tuple[Any, _Pool]:
    """Run a delivery through the Celery worker's strategy; return its Request."""
    pool = _Pool()
    consumer = Mock()
    consumer.hostname = "celery@test"
    consumer.connection_errors = ()
    consumer.event_dispatcher = None
    consumer.disable_rate_limits = True
    consumer.task_buckets = {}
    consumer.pool = pool
    consumer.controller.state.revoked = set()
    handle = app.tasks[TASK].start_strategy(app, consumer)
    handle(raw, None, Mock(), Mock(), [])
    # A job without an ETA goes straight to the pool; one with an ETA to the timer.
    if consumer.on_task_request.called:
        request = consumer.on_task_request.call_args.args[0]
    else:
        request = consumer.timer.call_at.call_args.args[2][0]
    return request, pool


def _run_in_pool(app: Any, request: Any, pool: _Pool) -> Any:
    request.execute_using_pool(pool)
    target, args, options = pool.jobs[-1]
    worker_state.task_ready(request)
    return target(*args, app=app), options


def test_our_message_runs_on_celery(app: Any, recorder: _Recorder, queue_name: str) -> None:
    message = new_message(
        TASK,
        [1, "two", {"three": [3]}],
        {"k": "v"},
        queue=queue_name,
        expires=_iso_in(600),
        time_limit=30,
        soft_time_limit=20,
        parent_id="parent-1",
        group="group-1",
        headers={"traceparent": "00-aaaa-bbbb-01"},
    )
    message.retries = 2
    request, pool = _celery_receives(app, _deliver(message, queue_name))
    assert (request.name, request.id) == (TASK, message.id)
    assert (request.args, request.kwargs) == ([1, "two", {"three": [3]}], {"k": "v"})
    assert request.request_dict["retries"] == 2
    assert request.eta is None
    assert message.expires is not None and request.expires == _parse(message.expires)
    assert list(request.time_limits) == [30, 20]
    assert (request.root_id, request.parent_id) == (message.id, "parent-1")
    assert request.content_type == "application/json"

    (failed, result, _), options = _run_in_pool(app, request, pool)
    assert failed == 0 and result == "'done'"
    assert (options["timeout"], options["soft_timeout"]) == (30, 20)
    [seen] = recorder.calls
    assert seen["args"] == [1, "two", {"three": [3]}] and seen["kwargs"] == {"k": "v"}
    assert (seen["id"], seen["retries"]) == (message.id, 2)
    assert (seen["root_id"], seen["parent_id"], seen["group"]) == (
        message.id,
        "parent-1",
        "group-1",
    )
    assert list(seen["timelimit"]) == [30, 20]
    assert seen["origin"] == message.origin
    assert seen["traceparent"] == "00-aaaa-bbbb-01"


@pytest.mark.parametrize("task_ignores_result", [False, True])
def test_the_celery_tasks_own_ignore_result_decides(
    app: Any, queue_name: str, task_ignores_result: bool
) -> None:
    # uno_jobs sends no ignore_result header: a Celery worker falls back to the task's
    # setting, as it does for a Celery producer that left the option unset.
    app.tasks[TASK].ignore_result = task_ignores_result
    request, _ = _celery_receives(
        app, _deliver(new_message(TASK, [1], queue=queue_name), queue_name)
    )
    assert "ignore_result" not in request.request_dict
    assert request.ignore_result is task_ignores_result


def test_our_eta_is_honoured_by_celery(app: Any, recorder: _Recorder, queue_name: str) -> None:
    eta = datetime.now(timezone.utc) + timedelta(hours=1)
    message = new_message(TASK, [eta], queue=queue_name, eta=eta)
    request, pool = _celery_receives(app, _deliver(message, queue_name))
    assert request.eta == eta
    (failed, _, _), _ = _run_in_pool(app, request, pool)
    assert failed == 0
    # A datetime argument arrives as a datetime, through Celery's own JSON decoding.
    assert recorder.calls[0]["args"] == [eta]


def test_celery_job_retried_by_us_goes_back_to_celery(
    app: Any, recorder: _Recorder, queue_name: str
) -> None:
    _, message = _decode_celery(
        app, task_id="round", args=(5,), kwargs={"x": 1}, shadow="nice-name", retries=1
    )
    message.retries += 1
    request, pool = _celery_receives(app, _deliver(message, queue_name))
    assert (request.id, request.name) == ("round", "nice-name")
    assert request.request_dict["retries"] == 2
    (failed, _, _), _ = _run_in_pool(app, request, pool)
    assert failed == 0
    assert recorder.calls[0]["args"] == [5] and recorder.calls[0]["retries"] == 2
