"""Broker URLs (``parse_broker_url``, ``BrokerSpec.connection``) and the queue topology.

Nothing here connects: kombu connections are made lazily and only inspected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from uno_jobs.broker._spec import (
    DEFAULT_CONFIRM_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_VISIBILITY_TIMEOUT,
    parse_broker_url,
)
from uno_jobs.broker._topology import (
    dead_queue_name,
    kombu_queue,
    level_queue_name,
    level_queues,
)
from uno_jobs.errors import ConfigurationError

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp"),
        ("amqps://u:p@rabbit.example:5671/vhost", "amqp"),
        ("pyamqp://localhost//", "amqp"),
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss://:pw@redis.example:6380/1", "redis"),
        ("sqs://", "sqs"),
        ("embedded://", "embedded"),
        ("embedded:///tmp/broker.sqlite3", "embedded"),
    ],
)
def test_scheme_gives_the_kind(url: str, kind: str) -> None:
    spec = parse_broker_url(url)
    assert spec.kind == kind
    assert spec.url == url
    assert spec.visibility_timeout == DEFAULT_VISIBILITY_TIMEOUT
    assert spec.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert spec.confirm_timeout == DEFAULT_CONFIRM_TIMEOUT
    assert spec.options == {}


@pytest.mark.parametrize("url", ["kafka://h:9092", "http://h/", "h:6379", ""])
def test_unknown_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown scheme"):
        parse_broker_url(url)


def test_redis_query_options_are_parsed() -> None:
    spec = parse_broker_url(
        "redis://127.0.0.1:6379/2?visibility_timeout=120&key_prefix=myapp:"
        "&connect_timeout=2.5&confirm_timeout=7&polling_interval=0.5&restore_interval=3"
    )
    assert spec.kind == "redis"
    assert spec.visibility_timeout == 120.0
    assert spec.connect_timeout == 2.5
    assert spec.confirm_timeout == 7.0
    assert spec.options["key_prefix"] == "myapp:"
    assert spec.options["polling_interval"] == "0.5"
    assert spec.options["restore_interval"] == "3"


def test_amqp_and_embedded_query_options_are_parsed() -> None:
    amqp = parse_broker_url("amqp://guest:guest@h:5672//?connect_timeout=1&confirm_timeout=3")
    assert (amqp.connect_timeout, amqp.confirm_timeout) == (1.0, 3.0)
    embedded = parse_broker_url("embedded://?visibility_timeout=5&polling_interval=0.05")
    assert embedded.visibility_timeout == 5.0
    assert embedded.options["polling_interval"] == "0.05"


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("redis://h:6379/0?visibility_timout=5", "visibility_timout"),
        ("embedded://?nosuch=1", "nosuch"),
        # Valid options, but not for this broker.
        ("amqp://guest:guest@h//?visibility_timeout=5", "visibility_timeout"),
        ("amqp://guest:guest@h//?key_prefix=x:", "key_prefix"),
        ("amqp://guest:guest@h//?polling_interval=1", "polling_interval"),
        ("embedded://?key_prefix=x:", "key_prefix"),
        ("embedded://?restore_interval=1", "restore_interval"),
        ("redis://h/0?region=eu-west-1", "region"),
    ],
)
def test_unknown_or_misplaced_option_is_named(url: str, option: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_broker_url(url)
    text = str(info.value)
    assert f"unknown option '{option}'" in text
    assert "allowed:" in text


@pytest.mark.parametrize(
    "option",
    ["visibility_timeout", "connect_timeout", "confirm_timeout", "polling_interval"],
)
@pytest.mark.parametrize("value", ["abc", "", "0", "-1"])
def test_bad_numbers_are_named(option: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_broker_url(f"redis://h:6379/0?{option}={value}")
    assert f"'{option}'" in str(info.value)


def test_bad_restore_interval_is_named() -> None:
    with pytest.raises(ConfigurationError, match="'restore_interval'"):
        parse_broker_url("redis://h/0?restore_interval=soon")


def test_empty_key_prefix_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="'key_prefix'"):
        parse_broker_url("redis://h/0?key_prefix=")


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://guest:{SECRET}@h:5672//?visibility_timeout=3",
        f"redis://:{SECRET}@h:6379/0?nosuch=1",
        f"redis://user:{SECRET}@h:6379/0?connect_timeout=never",
        f"redis://user:{SECRET}@h:6379/0?confirm_timeout=-2",
        f"rediss://:{SECRET}@h/0?key_prefix=",
        f"kafka://user:{SECRET}@h:9092",
    ],
)
def test_password_is_never_in_an_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_broker_url(url)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://guest:{SECRET}@h:5672//",
        f"redis://:{SECRET}@h:6379/0?key_prefix=a:",
        f"rediss://user:{SECRET}@h:6380/1",
    ],
)
def test_display_hides_the_password(url: str) -> None:
    spec = parse_broker_url(url)
    assert SECRET not in spec.display
    assert "***" in spec.display
    assert spec.url == url, "the real URL is kept for connecting"


def test_repr_hides_the_password() -> None:
    spec = parse_broker_url(f"amqp://guest:{SECRET}@h:5672//")
    assert SECRET not in repr(spec)


# -- kombu connections ------------------------------------------------------------------------


def test_redis_connection_carries_prefix_and_visibility_timeout() -> None:
    spec = parse_broker_url(
        "redis://127.0.0.1:6379/3?key_prefix=app-x:&visibility_timeout=42"
        "&connect_timeout=1.5&polling_interval=0.2&restore_interval=4"
    )
    conn: Any = spec.connection()
    try:
        options = conn.transport_options
        assert options["global_keyprefix"] == "app-x:"
        assert options["visibility_timeout"] == 42.0
        assert options["socket_connect_timeout"] == 1.5
        assert options["polling_interval"] == 0.2
        assert options["unacked_restore_interval"] == 4.0
        assert options["queue_order_strategy"] == "priority"
        assert conn.connect_timeout == 1.5
        assert conn.hostname == "127.0.0.1"
        assert conn.port == 6379
        assert str(conn.virtual_host) == "3"
        assert "key_prefix" not in conn.as_uri(), "uno_jobs options are not passed to kombu"
    finally:
        conn.release()


def test_redis_connection_without_prefix_has_no_global_keyprefix() -> None:
    conn: Any = parse_broker_url("redis://127.0.0.1:6379/0").connection()
    try:
        assert "global_keyprefix" not in conn.transport_options
        assert conn.transport_options["visibility_timeout"] == DEFAULT_VISIBILITY_TIMEOUT
    finally:
        conn.release()


def test_amqp_connection_has_timeouts_and_no_transport_options() -> None:
    conn: Any = parse_broker_url(
        f"amqp://guest:{SECRET}@rabbit:5672//?connect_timeout=2"
    ).connection()
    try:
        assert conn.connect_timeout == 2.0
        assert conn.hostname == "rabbit"
        assert conn.userid == "guest"
        assert conn.password == SECRET
        assert conn.transport_options == {}
    finally:
        conn.release()


def test_embedded_connection_points_at_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNO_JOBS_HOME", str(tmp_path))
    default: Any = parse_broker_url("embedded://?visibility_timeout=7").connection()
    explicit: Any = parse_broker_url(f"embedded://{tmp_path}/other.sqlite3").connection()
    try:
        assert default.transport_options["path"] == str(tmp_path.resolve() / "broker.sqlite3")
        assert default.transport_options["visibility_timeout"] == 7.0
        assert explicit.transport_options["path"] == str(tmp_path / "other.sqlite3")
    finally:
        default.release()
        explicit.release()
    assert not (tmp_path / "broker.sqlite3").exists(), "making a connection opens nothing"


@pytest.mark.parametrize(
    ("kind_url", "system"),
    [
        ("amqp://h//", "rabbitmq"),
        ("redis://h/0", "redis"),
        ("sqs://", "aws_sqs"),
        ("embedded://", "uno_jobs_embedded"),
    ],
)
def test_messaging_system(kind_url: str, system: str) -> None:
    assert parse_broker_url(kind_url).messaging_system == system


# -- topology ---------------------------------------------------------------------------------


def test_level_and_dead_queue_names() -> None:
    assert level_queue_name("q", "normal") == "q"
    assert level_queue_name("q", "critical") == "q.critical"
    assert level_queue_name("q", "high") == "q.high"
    assert level_queue_name("q", "low") == "q.low"
    assert dead_queue_name("q") == "q.dead"


def test_level_queues_in_start_order() -> None:
    assert level_queues("q") == [
        ("q.critical", "critical"),
        ("q.high", "high"),
        ("q", "normal"),
        ("q.low", "low"),
    ]
    # The order is the levels' order, not the order asked for.
    assert level_queues("q", ["low", "critical"]) == [("q.critical", "critical"), ("q.low", "low")]
    assert level_queues("q", ("normal",)) == [("q", "normal")]


def test_level_queues_refuse_an_unknown_level() -> None:
    with pytest.raises(ConfigurationError, match="'urgent'"):
        level_queues("q", ["high", "urgent"])


def test_kombu_queue_is_declared_like_celery() -> None:
    queue: Any = kombu_queue("reports.high")
    assert queue.name == "reports.high"
    assert queue.durable is True
    assert queue.auto_delete is False and queue.exclusive is False
    assert queue.exchange.name == "reports.high"
    assert queue.exchange.type == "direct"
    assert queue.exchange.durable is True
    assert queue.routing_key == "reports.high"
    assert queue.queue_arguments is None
    assert queue.max_priority is None


def test_kombu_queue_is_identical_to_celerys_missing_queue() -> None:
    celery = pytest.importorskip("celery")
    app = celery.Celery(set_as_current=False, broker="amqp://")
    theirs = app.amqp.queues.new_missing("reports")
    ours: Any = kombu_queue("reports")
    assert ours.as_dict(recurse=True) == theirs.as_dict(recurse=True)


def test_sqs_wait_time_seconds_is_checked_against_sqs_limit() -> None:
    from uno_jobs.broker._spec import parse_broker_url, sqs_visibility_seconds
    from uno_jobs.errors import ConfigurationError

    spec = parse_broker_url("sqs://k:s@127.0.0.1:4566?wait_time_seconds=0")
    assert spec.connection().transport_options["wait_time_seconds"] == 0
    assert parse_broker_url("sqs://k:s@h").connection().transport_options["wait_time_seconds"] == 1
    for bad in ("21", "-1", "0.5", "soon"):
        with pytest.raises(ConfigurationError, match="wait_time_seconds"):
            parse_broker_url(f"sqs://k:s@h?wait_time_seconds={bad}")
    with pytest.raises(ConfigurationError, match="wait_time_seconds"):
        parse_broker_url("redis://h/0?wait_time_seconds=1")
    assert [sqs_visibility_seconds(s) for s in (0.2, 1.5, 60)] == [1, 2, 60]
