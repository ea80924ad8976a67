"""``publish_frames`` writes the bytes py-amqp writes for the same publish, or declines.

The reference is py-amqp's own path as kombu's ``Producer.publish`` drives it on a py-amqp
channel: ``Message(body, priority=0, content_type=..., content_encoding=...,
application_headers=headers, delivery_mode=2, **properties)`` written by the
connection's ``frame_writer`` as ``basic.publish``. The reading side, ``FrameReader``,
is compared with py-amqp's ``frame_handler`` on the same frames. ``tests/integration/
test_batch_publish.py`` compares against kombu's ``Producer`` on a live channel.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from amqp import spec
from amqp.basic_message import Message
from amqp.exceptions import UnexpectedFrame
from amqp.method_framing import frame_handler, frame_writer
from amqp.serialization import dumps

from uno_jobs.broker import _amqp_frames
from uno_jobs.broker._amqp_frames import FrameReader, publish_frames
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


def ours(*args: Any) -> bytes | None:
    """``publish_frames`` for ``py_amqp_bytes``' arguments (the same content type)."""
    channel, exchange, routing_key, body, headers, properties, frame_max = args
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


def test_header_fields_met_again_are_written_as_the_first_time() -> None:
    """The cache of whole header fields (``_FIELDS``): a field seen before, a bool where
    an equal integer was cached (True == 1, False == 0) and the other way round, and a
    field met again after the cache was emptied are all written as py-amqp writes them."""
    _amqp_frames._FIELDS.clear()
    first = {"n": 1, "flag": True, "zero": 0, "off": False, "s": "x", "none": None}
    again = {"flag": 1, "n": True, "off": 0, "zero": False, "s": "x", "none": None}
    for headers in (first, again, first, again):
        same(1, "q", "q", b"{}", headers, {}, 131072)
    for n in range(_amqp_frames._FIELDS_MAX + 1):  # fills it, and empties it once
        same(1, "q", "q", b"{}", {"id": f"job-{n}"}, {}, 131072)
    assert len(_amqp_frames._FIELDS) <= _amqp_frames._FIELDS_MAX
    same(1, "q", "q", b"{}", first, {}, 131072)


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


# --- reading: FrameReader and read_properties against py-amqp's frame_handler ------------


def frames_of(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split written bytes into the (type, channel, payload) frames a transport reads."""
    frames = []
    offset = 0
    while offset < len(data):
        kind, channel, size = struct.unpack_from(">BHI", data, offset)
        frames.append((kind, channel, data[offset + 7 : offset + 7 + size]))
        offset += 8 + size
    return frames


def deliver(channel: int, body: bytes, headers: dict[str, Any], frame_max: int = 131072) -> Any:
    """The frames of a ``basic.deliver`` of ``body``: a publish's header and body frames
    behind a deliver method frame."""
    method = spec.Basic.Deliver
    args = dumps("sLbss", ("ctag", 7, False, "ex", "rk"))
    method_frame = struct.pack(">BHI", 1, channel, 4 + len(args)) + struct.pack(">HH", *method)
    method_frame += args + b"\xce"
    published = py_amqp_bytes(
        channel, "ex", "rk", body, headers, {"correlation_id": "c"}, frame_max
    )
    return [frames_of(method_frame)[0], *frames_of(published)[1:]]


def handled(reader_factory: Any, frames: list[Any]) -> list[Any]:
    """What a frame handler made of ``frames``: its return values, its callbacks (a
    message as body, properties, size and readiness) and the frames it counted."""
    calls: list[Any] = []
    connection = SimpleNamespace(bytes_recv=0)
    reader = reader_factory(connection, lambda *args: calls.append(args))
    results = [reader(frame) for frame in frames]
    out = []
    for channel, method, args, message in calls:
        out.append(
            (
                channel,
                tuple(method),
                bytes(args),
                None
                if message is None
                else (message.body, message.properties, message.body_size, message.ready),
            )
        )
    return [results, out, connection.bytes_recv]


def both(frames: list[Any]) -> tuple[Any, Any]:
    return handled(frame_handler, frames), handled(FrameReader, frames)


def test_a_celery_protocol_delivery_reads_as_py_amqp_reads_it() -> None:
    enc = encode(new_message("app.add", [1, "ünï"], {"k": 2.5}, queue="q"))
    theirs, ours_ = both(deliver(1, enc.body, dict(enc.headers)))
    assert ours_ == theirs
    assert ours_[1][0][3][1]["application_headers"]["id"] == enc.headers["id"]


def test_every_header_type_reads_as_py_amqp_reads_it() -> None:
    headers: dict[str, Any] = {
        "s": "héllo",
        "n": None,
        "i": -5,
        "big": 2**40,
        "f": 0.25,
        "t": True,
        "a": [1, [None, "x"], {"k": False}],
        "d": {"nested": {"x": 1.5}},
        "raw": b"bytes",
    }
    theirs, ours_ = both(deliver(3, b"[]", headers))
    assert ours_ == theirs


def test_types_it_leaves_to_py_amqp_read_the_same() -> None:
    headers = {
        "when": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        "amount": decimal.Decimal("1.25"),
    }
    theirs, ours_ = both(deliver(1, b"[]", headers))
    assert ours_ == theirs


def test_text_that_is_not_utf8_reads_as_py_amqp_reads_it() -> None:
    frames = deliver(1, b"[]", {"k": "abc"})
    kind, channel, payload = frames[1]
    broken = payload.replace(b"S\x00\x00\x00\x03abc", b"S\x00\x00\x00\x03\xff\xfe\xfd")
    assert broken != payload
    frames[1] = (kind, channel, broken)
    theirs, ours_ = both(frames)
    assert ours_ == theirs


def test_a_body_in_several_frames_and_an_empty_body() -> None:
    theirs, ours_ = both(deliver(1, b"x" * 10000, {"id": "1"}, frame_max=4096))
    assert ours_ == theirs
    assert ours_[1][0][3][0] == b"x" * 10000
    theirs, ours_ = both(deliver(1, b"", {"id": "1"}))
    assert ours_ == theirs


def test_methods_heartbeats_and_frames_out_of_order() -> None:
    ack = (1, 1, b"\x00\x3c\x00\x50" + b"\x00" * 9)
    heartbeat = (8, 0, b"")
    frames = deliver(1, b"[]", {})
    sequence = [ack, frames[0], heartbeat, frames[1], frames[2], ack]
    theirs, ours_ = both(sequence)
    assert ours_ == theirs
    for factory in (frame_handler, FrameReader):
        reader = factory(SimpleNamespace(bytes_recv=0), lambda *args: None)
        with pytest.raises(UnexpectedFrame):
            reader(frames[1])  # a content header with no method before it
