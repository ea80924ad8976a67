"""The job envelope: building, encoding, decoding, refusing, dead-letter headers."""

from __future__ import annotations

import json
import pickle
import uuid
from dataclasses import fields
from datetime import date, datetime, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest

from uno_jobs.errors import ConfigurationError, MessageError, PayloadError
from uno_jobs.message import (
    CONTENT_TYPE,
    DEFAULT_MAX_MESSAGE_BYTES,
    PRIORITY_LEVELS,
    Encoded,
    Message,
    dead_letter_headers,
    decode,
    encode,
    iso_from_timestamp,
    new_message,
    parse_priority,
    random_uuid,
    time_ordered_uuid,
    timestamp_from_iso,
)


def _full_message() -> Message:
    """A message with every field set to something other than its default."""
    return Message(
        id="job-1",
        task="reports.generate",
        args=[1, "two", [3.5, None], {"k": True}],
        kwargs={"format": "pdf", "pages": [1, 2]},
        queue="default",
        priority="high",
        retries=2,
        eta="2030-01-02T03:04:05.678901+00:00",
        expires="2030-01-03T00:00:00+00:00",
        time_limit=300.0,
        soft_time_limit=240,
        root_id="root-1",
        parent_id="parent-1",
        group="group-1",
        origin="gen42@host",
        enqueued_at=1700000000.25,
        worker_lost=1,
        extra_headers={"traceparent": "00-abc-def-01", "tracestate": "k=v", "uno_x": [1]},
        embed={"callbacks": [{"task": "cb"}], "errbacks": None, "chain": None, "chord": None},
    )


def _roundtrip(message: Message, **kwargs: Any) -> Message:
    enc = encode(message)
    return decode(
        enc.body,
        enc.headers,
        enc.content_type,
        enc.content_encoding,
        queue=message.queue,
        **kwargs,
    )


def _encoded_headers(**overrides: Any) -> tuple[bytes, dict[str, Any]]:
    enc = encode(new_message("t", [1], {"a": 2}, queue="q", job_id="id-1"))
    headers = dict(enc.headers)
    headers.update(overrides)
    return enc.body, headers


def _reason(body: Any, headers: Any, content_type: Any = CONTENT_TYPE, **kw: Any) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode(body, headers, content_type, queue="q", **kw)
    return info.value


# --- round trips ---------------------------------------------------------------------


def test_round_trip_keeps_every_field() -> None:
    original = _full_message()
    decoded = _roundtrip(original)
    for f in fields(Message):
        if f.name == "extra_headers":
            continue
        assert getattr(decoded, f.name) == getattr(original, f.name), f.name
    for key, value in original.extra_headers.items():
        assert decoded.extra_headers[key] == value
    assert decoded.attempt == 3


def test_round_trip_of_a_decoded_message_is_stable() -> None:
    once = _roundtrip(_full_message())
    twice = _roundtrip(once)
    assert twice == once
    assert encode(twice).headers == encode(once).headers


def test_round_trip_of_defaults() -> None:
    original = Message(id="i", task="t", args=[], kwargs={}, queue="q")
    decoded = _roundtrip(original)
    assert decoded == Message(
        id="i",
        task="t",
        args=[],
        kwargs={},
        queue="q",
        extra_headers={
            k: v for k, v in encode(original).headers.items() if k in {"argsrepr", "kwargsrepr"}
        },
    )
    assert decoded.attempt == 1


def test_encode_output_has_celery_v2_shape() -> None:
    enc = encode(_full_message())
    assert isinstance(enc, Encoded)
    assert enc.content_type == "application/json"
    assert enc.content_encoding == "utf-8"
    assert enc.properties == {"correlation_id": "job-1", "reply_to": ""}
    args, kwargs, embed = json.loads(enc.body)
    assert args == [1, "two", [3.5, None], {"k": True}]
    assert kwargs == {"format": "pdf", "pages": [1, 2]}
    assert embed["callbacks"] == [{"task": "cb"}]
    h = enc.headers
    assert h["lang"] == "py"
    assert (h["task"], h["id"], h["retries"]) == ("reports.generate", "job-1", 2)
    assert h["timelimit"] == [300.0, 240]
    assert (h["root_id"], h["parent_id"], h["group"]) == ("root-1", "parent-1", "group-1")
    assert h["argsrepr"] == repr(_full_message().args)
    assert h["kwargsrepr"] == repr(_full_message().kwargs)
    assert h["uno_priority"] == "high"
    assert h["uno_enqueued_at"] == 1700000000.25
    assert h["uno_worker_lost"] == 1
    assert h["traceparent"] == "00-abc-def-01"
    json.dumps(h)  # every header value is JSON


def test_encode_sends_no_header_at_a_value_celery_assumes_when_it_is_missing() -> None:
    # Celery 5's own producer adds shadow, group_index, ignore_result, stamps and more at
    # their defaults; each costs every publish and decode, and a missing ignore_result
    # lets the Celery task's setting decide. A first attempt carries no uno_worker_lost.
    h = encode(Message(id="i", task="t", args=[], kwargs={}, queue="q")).headers
    assert set(h) == {
        "lang", "task", "id", "eta", "expires", "group", "retries", "timelimit", "root_id",
        "parent_id", "origin", "argsrepr", "kwargsrepr", "uno_enqueued_at", "uno_priority",
    }  # fmt: skip
    lost = Message(id="i", task="t", args=[], kwargs={}, queue="q", worker_lost=2)
    assert encode(lost).headers["uno_worker_lost"] == 2
    again = Message(id="i", task="t", args=[], kwargs={}, queue="q")
    again.extra_headers["uno_worker_lost"] = 3  # set by hand: the field decides
    assert "uno_worker_lost" not in encode(again).headers


def test_unknown_headers_are_kept_and_resent() -> None:
    body, headers = _encoded_headers(traceparent="00-t-s-01", custom={"a": [1, 2]})
    message = decode(body, headers, CONTENT_TYPE, queue="q")
    assert message.extra_headers["traceparent"] == "00-t-s-01"
    assert message.extra_headers["custom"] == {"a": [1, 2]}
    message.retries += 1
    again = encode(message).headers
    assert again["traceparent"] == "00-t-s-01"
    assert again["custom"] == {"a": [1, 2]}
    assert again["retries"] == 1


def test_delivery_headers_are_not_resent() -> None:
    body, headers = _encoded_headers(compression="application/x-gzip", **{"x-delivery-count": 2})
    message = decode(body, headers, CONTENT_TYPE, queue="q")
    assert "compression" not in message.extra_headers
    message.extra_headers["compression"] = "application/x-gzip"
    assert "compression" not in encode(message).headers


def test_a_producer_chosen_argsrepr_is_kept() -> None:
    body, headers = _encoded_headers(argsrepr="(<hidden>,)", kwargsrepr="{}")
    message = decode(body, headers, CONTENT_TYPE, queue="q")
    assert encode(message).headers["argsrepr"] == "(<hidden>,)"


def test_argsrepr_of_a_large_payload_shows_its_start() -> None:
    items = [{"n": i} for i in range(5000)]
    headers = encode(new_message("t", items, {"a": 1, "b": "y" * 3000}, queue="q")).headers
    assert headers["argsrepr"].startswith("[{'n': 0}, {'n': 1}, ")
    assert len(headers["argsrepr"]) == 1024
    assert headers["kwargsrepr"].startswith("{'a': 1, 'b': 'yyy")


@pytest.mark.parametrize("size", [2000, 50_000])  # plain repr, then the bounded one
def test_argsrepr_is_cut(size: int) -> None:
    enc = encode(new_message("t", ["x" * size], {"k": "y" * size}, queue="q"))
    for key in ("argsrepr", "kwargsrepr"):
        assert 10 < len(enc.headers[key]) <= 1024
        assert "..." in enc.headers[key]


def test_priority_header_wins_over_the_queue_level() -> None:
    body, headers = _encoded_headers(uno_priority="critical")
    assert decode(body, headers, CONTENT_TYPE, queue="q", priority="low").priority == "critical"
    del headers["uno_priority"]
    assert decode(body, headers, CONTENT_TYPE, queue="q", priority="low").priority == "low"


def test_decode_accepts_str_and_an_already_decoded_body() -> None:
    body, headers = _encoded_headers()
    from_str = decode(body.decode(), headers, CONTENT_TYPE, queue="q")
    from_list = decode(json.loads(body), headers, CONTENT_TYPE, queue="q")
    from_bytearray = decode(bytearray(body), headers, CONTENT_TYPE, queue="q")
    assert from_str == from_list == from_bytearray
    assert from_str.args == [1] and from_str.kwargs == {"a": 2}


def test_null_embed_and_missing_optional_headers_get_defaults() -> None:
    headers = {"task": "t", "id": "i"}
    message = decode(b"[[], {}, null]", headers, CONTENT_TYPE, None, queue="q")
    assert message.retries == 0 and message.time_limit is None and message.worker_lost == 0
    assert message.embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_kombu_typed_values_survive() -> None:
    values = [
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),
        date(2024, 5, 6),
        Decimal("1.10"),
        uuid.UUID(int=7),
        b"text",
        b"\xff\x00",
    ]
    message = new_message("t", values, {"when": values[0]}, queue="q")
    decoded = _roundtrip(message)
    assert decoded.args == values
    assert decoded.kwargs == {"when": values[0]}


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        (b'{"__type__": "pydantic", "__value__": 1}', "pydantic"),
        (b'{"__type__": "decimal", "__value__": "abc"}', "decimal"),
        (b'{"__type__": "bytes", "__value__": 5}', "bytes"),
        (b'{"__type__": "uuid", "__value__": "nope"}', "uuid"),
        (b'{"__type__": ["x"], "__value__": 1}', "marker"),
    ],
)
def test_bad_type_marker_is_a_decode_error(marker: bytes, expected: str) -> None:
    _, headers = _encoded_headers()
    err = _reason(b"[[" + marker + b"], {}, null]", headers)
    assert (err.reason, err.job_id) == ("decode_error", "id-1")
    assert expected in err.detail


def test_a_dict_that_only_looks_like_a_marker_is_left_alone() -> None:
    _, headers = _encoded_headers()
    body = b'[[{"__type__": "datetime", "__value__": "x", "other": 1}], {}, null]'
    message = decode(body, headers, CONTENT_TYPE, queue="q")
    assert message.args == [{"__type__": "datetime", "__value__": "x", "other": 1}]


# --- refusals ------------------------------------------------------------------------


def test_pickle_is_refused_without_being_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle must never be loaded")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    body = pickle.dumps(([1], {}, {}))
    _, headers = _encoded_headers()
    err = _reason(body, headers, "application/x-python-serialize", content_encoding="binary")
    assert err.reason == "content_type_disallowed"
    assert err.job_id == "id-1"
    assert "application/x-python-serialize" in str(err)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/yaml", ""])
def test_other_content_types_are_refused(content_type: str | None) -> None:
    body, headers = _encoded_headers()
    assert _reason(body, headers, content_type).reason == "content_type_disallowed"


def test_json_content_type_with_parameters_is_accepted() -> None:
    body, headers = _encoded_headers()
    message = decode(body, headers, "Application/JSON; charset=utf-8", "UTF8", queue="q")
    assert message.id == "id-1"


def test_non_utf8_content_encoding_is_a_decode_error() -> None:
    body, headers = _encoded_headers()
    assert _reason(body, headers, content_encoding="latin-1").reason == "decode_error"


def test_too_large_body_is_refused_before_parsing() -> None:
    _, headers = _encoded_headers()
    body = b"[" * 2000  # not JSON either: size is checked first
    err = _reason(body, headers, max_bytes=1000)
    assert (err.reason, err.job_id) == ("too_large", "id-1")
    assert "2000" in err.detail and "1000" in err.detail


def test_too_large_str_body_counts_utf8_bytes() -> None:
    _, headers = _encoded_headers()
    body = '[["' + "é" * 400 + '"], {}, null]'  # 414 characters, 814 bytes
    assert _reason(body, headers, max_bytes=600).reason == "too_large"
    assert decode(body, headers, CONTENT_TYPE, queue="q", max_bytes=900).args == ["é" * 400]


def test_invalid_json_is_a_decode_error() -> None:
    _, headers = _encoded_headers()
    err = _reason(b"[[1], {}, ", headers)
    assert (err.reason, err.job_id) == ("decode_error", "id-1")


def test_non_utf8_bytes_are_a_decode_error() -> None:
    _, headers = _encoded_headers()
    err = _reason(b'[["\xff\xfe"], {}, null]', headers)
    assert err.reason == "decode_error"
    assert "UTF-8" in err.detail


@pytest.mark.parametrize(
    "body",
    [
        b'{"args": [], "kwargs": {}}',
        b"[1, 2, 3]",
        b"[[], {}]",
        b"[[], {}, {}, {}]",
        b"[{}, {}, {}]",
        b"[[], [], {}]",
        b"[[], {}, 5]",
        b'"text"',
        b"null",
    ],
)
def test_wrong_body_shape_is_invalid(body: bytes) -> None:
    _, headers = _encoded_headers()
    err = _reason(body, headers)
    assert (err.reason, err.job_id) == ("invalid_message", "id-1")


def test_protocol_v1_body_is_refused_and_says_so() -> None:
    body = json.dumps({"task": "t", "id": "v1-id", "args": [], "kwargs": {}}).encode()
    err = _reason(body, {})
    assert err.reason == "invalid_message"
    assert "protocol v1" in err.detail
    assert err.job_id is None


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("task", None),
        ("task", ""),
        ("task", 5),
        ("retries", "1"),
        ("retries", -1),
        ("retries", True),
        ("timelimit", [1]),
        ("timelimit", ["1", None]),
        ("timelimit", 10),
        ("eta", "tomorrow"),
        ("expires", 12),
        ("root_id", 3),
        ("uno_enqueued_at", "now"),
        ("uno_worker_lost", -2),
    ],
)
def test_ill_typed_headers_are_invalid(header: str, value: Any) -> None:
    body, headers = _encoded_headers(**{header: value})
    err = _reason(body, headers)
    assert (err.reason, err.job_id) == ("invalid_message", "id-1")
    assert header in err.detail


def test_missing_task_header_is_invalid() -> None:
    body, headers = _encoded_headers()
    del headers["task"]
    err = _reason(body, headers)
    assert (err.reason, err.job_id) == ("invalid_message", "id-1")
    assert "task" in err.detail


@pytest.mark.parametrize("headers", [None, {"task": "t"}, {"task": "t", "id": 7}])
def test_missing_or_unreadable_id_gives_no_job_id(headers: Any) -> None:
    err = _reason(b"[[], {}, {}]", headers)
    assert (err.reason, err.job_id) == ("invalid_message", None)


def test_timelimit_may_hold_nulls() -> None:
    body, headers = _encoded_headers(timelimit=[None, 5])
    message = decode(body, headers, CONTENT_TYPE, queue="q")
    assert (message.time_limit, message.soft_time_limit) == (None, 5)


# --- encode errors -------------------------------------------------------------------


def test_unserialisable_arg_names_task_job_and_argument() -> None:
    message = new_message("reports.generate", [1, object()], queue="q", job_id="job-9")
    with pytest.raises(PayloadError) as info:
        encode(message)
    text = str(info.value)
    assert "reports.generate" in text and "job-9" in text
    assert "args[1]" in text and "object" in text


def test_unserialisable_kwarg_is_named() -> None:
    message = new_message("t", [], {"fine": 1, "bad": {1, 2}}, queue="q")
    with pytest.raises(PayloadError, match=r"kwargs\['bad'\]"):
        encode(message)


def test_circular_argument_is_a_payload_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(PayloadError, match=r"args\[0\]"):
        encode(new_message("t", [loop], queue="q"))


def test_oversized_payload_says_size_and_limit() -> None:
    message = new_message("big.task", ["x" * 2000], queue="q", job_id="job-big")
    with pytest.raises(PayloadError) as info:
        encode(message, max_bytes=1000)
    text = str(info.value)
    assert "big.task" in text and "job-big" in text and "1000" in text
    size = len(encode(message).body)
    assert str(size) in text
    assert len(encode(message, max_bytes=size).body) == size


def test_default_limit_is_256_kib() -> None:
    assert DEFAULT_MAX_MESSAGE_BYTES == 262144
    with pytest.raises(PayloadError):
        encode(new_message("t", ["x" * DEFAULT_MAX_MESSAGE_BYTES], queue="q"))


# --- new_message ---------------------------------------------------------------------


def test_new_message_fills_ids_origin_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.time", lambda: 1234.5)
    message = new_message("t", (1, 2), {"a": 1}, queue="q")
    assert uuid.UUID(message.id).version == 7
    assert message.root_id == message.id
    assert message.args == [1, 2]
    assert message.enqueued_at == 1234.5
    assert message.origin is not None and message.origin.startswith("gen")
    assert "@" in message.origin
    assert message.priority == "normal" and message.retries == 0
    assert new_message("t", queue="q").id != message.id


def test_new_message_options() -> None:
    eta = datetime(2030, 1, 1, 12, 0)  # naive: taken as UTC
    message = new_message(
        "t",
        queue="q",
        priority="HIGH",
        job_id="mine",
        eta=eta,
        expires="2030-01-02T00:00:00Z",
        time_limit=10,
        soft_time_limit=5,
        root_id="r",
        parent_id="p",
        group="g",
        headers={"traceparent": "tp"},
    )
    assert message.id == "mine" and message.root_id == "r" and message.priority == "high"
    assert message.eta == "2030-01-01T12:00:00+00:00"
    assert timestamp_from_iso(message.eta) == eta.replace(tzinfo=timezone.utc).timestamp()
    assert message.expires == "2030-01-02T00:00:00Z"
    assert message.extra_headers == {"traceparent": "tp"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task": ""},
        {"args": "abc"},
        {"args": 5},
        {"kwargs": {1: "x"}},
        {"kwargs": MappingProxyType({"a": 1, 2: "x"})},
        {"kwargs": ["a"]},
        {"args": b"ab"},
        {"args": {1, 2}},
        {"job_id": ""},
        {"job_id": "x" * 256},
        {"time_limit": 0},
        {"soft_time_limit": True},
        {"eta": "not a time"},
        {"queue": ""},
    ],
)
def test_new_message_rejects_bad_input(kwargs: dict[str, Any]) -> None:
    call: dict[str, Any] = {"task": "t", "queue": "q", **kwargs}
    with pytest.raises(PayloadError):
        new_message(**call)


def test_new_message_takes_any_sequence_and_mapping_and_copies_them() -> None:
    args, kwargs = (1, [2]), MappingProxyType({"a": 1})
    message = new_message("t", args, kwargs, queue="q")
    assert message.args == [1, [2]] and type(message.args) is list
    assert message.kwargs == {"a": 1} and type(message.kwargs) is dict
    listed, mapped = [1], {"b": 2}
    message = new_message("t", listed, mapped, queue="q")
    assert message.args is not listed and message.kwargs is not mapped


def _check_uuid_texts(drawn: list[str], version: int) -> None:
    """Distinct UUIDs of ``version``, RFC 4122's variant, in their usual text form, whose
    variant digit takes all four of its values (its two low bits are random)."""
    assert len(set(drawn)) == len(drawn)
    for text in drawn:
        parsed = uuid.UUID(text)
        assert parsed.version == version and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    assert {text[19] for text in drawn} == set("89ab")


def test_random_uuid_is_a_version_4_uuid_in_its_usual_text_form() -> None:
    drawn = [random_uuid() for _ in range(2000)]
    _check_uuid_texts(drawn, 4)
    # Every random position varies.
    assert len({text[0] for text in drawn}) == 16


def test_time_ordered_uuid_is_a_version_7_uuid_of_the_time_in_milliseconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn = [time_ordered_uuid() for _ in range(2000)]
    _check_uuid_texts(drawn, 7)
    # The random positions vary: the digits after the version one take all sixteen values.
    assert len({text[15] for text in drawn}) == 16
    assert len({text[-1] for text in drawn}) == 16
    # The first 48 bits are the Unix time in milliseconds: ids of later times sort after.
    stamps = iter([1_700_000_000_123_456_789, 1_700_000_000_124_000_000])
    monkeypatch.setattr("time.time_ns", lambda: next(stamps))
    first, second = time_ordered_uuid(), time_ordered_uuid()
    assert uuid.UUID(first).int >> 80 == 1_700_000_000_123
    assert uuid.UUID(second).int >> 80 == 1_700_000_000_124
    assert first < second


def test_new_message_rejects_unknown_priority() -> None:
    with pytest.raises(ConfigurationError, match="urgent"):
        new_message("t", queue="q", priority="urgent")


# --- priorities, times, dead letters -------------------------------------------------


def test_parse_priority() -> None:
    assert PRIORITY_LEVELS == ("critical", "high", "normal", "low")
    for level in PRIORITY_LEVELS:
        assert parse_priority(level) == level
    assert parse_priority(" Low ") == "low"
    with pytest.raises(ConfigurationError) as info:
        parse_priority("urgent")
    assert "urgent" in str(info.value)
    assert all(level in str(info.value) for level in PRIORITY_LEVELS)
    with pytest.raises(ConfigurationError):
        parse_priority(3)  # type: ignore[arg-type]


def test_iso_helpers_round_trip() -> None:
    assert iso_from_timestamp(0) == "1970-01-01T00:00:00+00:00"
    assert timestamp_from_iso(iso_from_timestamp(1700000000.5)) == 1700000000.5
    assert timestamp_from_iso("1970-01-01T00:01:00") == 60.0
    assert timestamp_from_iso("1970-01-01T00:01:00Z") == 60.0


def test_dead_letter_headers() -> None:
    original = {
        "task": "t",
        "id": "i",
        "traceparent": "tp",
        "compression": "application/x-gzip",
        "when": datetime(2024, 1, 1, tzinfo=timezone.utc),
        "raw": b"\xffab",
        "nested": {"t": (1, Decimal("2"))},
    }
    snapshot = dict(original)
    out = dead_letter_headers(original, reason="unknown_task", error="boom", dead_at=5)
    assert original == snapshot
    assert out["task"] == "t" and out["id"] == "i" and out["traceparent"] == "tp"
    assert "compression" not in out
    assert out["when"] == "2024-01-01T00:00:00+00:00"
    assert out["nested"] == {"t": [1, "2"]}
    assert (out["uno_dead_reason"], out["uno_dead_error"], out["uno_dead_at"]) == (
        "unknown_task",
        "boom",
        5.0,
    )
    json.dumps(out)


def test_dead_letter_error_is_cut_to_1_kib() -> None:
    out = dead_letter_headers(None, reason="r", error="é" * 2000, dead_at=1.0)
    assert len(out["uno_dead_error"].encode("utf-8")) <= 1024
    assert out["uno_dead_error"].startswith("éé")
    assert dead_letter_headers({}, reason="r", error=None, dead_at=1.0)["uno_dead_error"] is None
