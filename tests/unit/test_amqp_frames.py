"""``publish_frames`` writes the bytes py-amqp writes for the same publish, or declines.

The reference is py-amqp's own path as kombu's ``Producer.publish`` drives it on a py-amqp
channel: ``Message(body, priority=0, content_type=..., content_encoding=...,
application_headers=headers, delivery_mode=2, **properties)`` written by the
connection's ``frame_writer`` as ``basic.publish``. ``tests/integration/
test_amqp_publish_frames.py`` compares against kombu's ``Producer`` on a live channel.
"""

from __future__ import annotations

import datetime
import decimal
from types import SimpleNamespace
from typing import Any

import pytest
from amqp import spec
from amqp.basic_message import Message
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from uno_jobs.broker._amqp_frames import publish_frames
from uno_jobs.message import encode, new_message


def py_amqp_bytes(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    headers: dict[str, Any],
    properties: dict[str, Any],
    frame_max: int,
) -> bytes:
    written: list[bytes] = []
    transport = SimpleNamespace(write=lambda data: written.append(bytes(data)))
    write = frame_writer(SimpleNamespace(frame_max=frame_max, bytes_sent=0), transport)
    message = Message(
        body,
        priority=0,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=headers,
        delivery_mode=2,
        **properties,
    )
    args = dumps("Bssbb", (0, exchange, routing_key, False, False))
    write(1, channel, spec.Basic.Publish, args, message)
    return b"".join(written)


def ours(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    headers: dict[str, Any],
    properties: dict[str, Any],
    frame_max: int,
) -> bytes | None:
    return publish_frames(
        channel,
        exchange,
        routing_key,
        body,
        headers,
        "application/json",
        "utf-8",
        properties,
        frame_max,
    )


def same(*args: Any) -> None:
    expected = py_amqp_bytes(*args)
    got = ours(*args)
    assert got is not None
    assert got == expected


def test_a_celery_protocol_message_is_byte_for_byte_py_amqps() -> None:
    message = new_message("app.add", [1, "two", 3.5], {"k": None}, queue="q", priority="high")
    enc = encode(message)
    same(1, "q.high", "q.high", enc.body, dict(enc.headers), dict(enc.properties), 131072)


def test_every_value_type_py_amqp_writes_natively() -> None:
    headers: dict[str, Any] = {
        "text": "héllo ☃",
        "empty": "",
        "none": None,
        "small": 7,
        "negative": -2147483647,
        "edge": 2147483647,
        "big": 2147483648,
        "huge_negative": -(2**63),
        "float": 0.1,
        "true": True,
        "false": False,
        "list": [None, [1, "a"], {"x": 1.5}],
        "tuple": (1, 2),
        "table": {"nested": {"deeper": ["x"]}, "n": 3},
        "raw": b"\x00\xff",
        "ünïcode-name": "v",
    }
    properties = {"correlation_id": "abc", "reply_to": "", "message_id": "m1", "timestamp": 5}
    same(7, "", "rk", b"body", headers, properties, 131072)


def test_no_headers_and_an_empty_body() -> None:
    same(1, "ex", "rk", b"", {}, {}, 4096)


@pytest.mark.parametrize("size", [4096 - 8 - 1, 4096 - 8, 4096 - 8 + 1, 3 * 4088 + 5])
def test_a_body_over_the_frame_size_is_split_as_py_amqp_splits_it(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    same(2, "ex", "rk", body, {"id": "1"}, {"correlation_id": "1"}, 4096)


def test_a_large_header_table_with_a_small_body() -> None:
    same(1, "ex", "rk", b"[]", {"argsrepr": "x" * 5000}, {}, 4096)


@pytest.mark.parametrize(
    "headers",
    [
        {"when": datetime.datetime(2026, 1, 1)},
        {"amount": decimal.Decimal("1.5")},
        {"sub": type("Text", (str,), {})("x")},
        {"too_big": 2**63},
        {"x" * 256: "name too long"},
        {1: "a key that is not text"},
        {"set": {1, 2}},
    ],
)
def test_values_without_an_exact_encoding_are_declined(headers: dict[Any, Any]) -> None:
    assert ours(1, "ex", "rk", b"[]", headers, {}, 131072) is None


@pytest.mark.parametrize(
    "properties",
    [
        {"priority": 3},  # kombu takes it as an argument
        {"expiration": 10},  # kombu turns seconds into milliseconds
        {"DelaySeconds": 3},  # SQS's, not AMQP's
        {"correlation_id": "x" * 256},
        {"timestamp": datetime.datetime(2026, 1, 1)},
    ],
)
def test_properties_it_cannot_write_as_kombu_would_are_declined(
    properties: dict[str, Any],
) -> None:
    assert ours(1, "ex", "rk", b"[]", {}, properties, 131072) is None


def test_a_text_body_is_declined() -> None:
    assert publish_frames(1, "e", "r", "text", {}, "t", "e", {}, 131072) is None  # type: ignore[arg-type]
