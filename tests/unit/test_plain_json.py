"""The enqueue path's fast ways: pydantic-core's JSON for plain values (bodies, envelopes,
Redis records), many-row SQLite inserts, and records built without the dataclass's
``__init__``. Each must give what the slower way gave."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from kombu.utils import json as kombu_json

from uno_jobs._sqlite_rows import MAX_PARAMETERS, insert_rows
from uno_jobs.broker._envelope import ENCODER, envelope_text
from uno_jobs.message import decode, encode, new_message
from uno_jobs.message._plainjson import is_plain, plain_json
from uno_jobs.store._base import (
    AttemptError,
    JobRecord,
    JobStatus,
    new_record,
    record_columns,
)
from uno_jobs.store._redis import _error_json, _record_texts, _texts

PLAIN: list[Any] = [
    None,
    True,
    0,
    -(2**80),
    1.5,
    -0.0,
    1e300,
    "",
    'héllo ☃ \u2028 "quoted" \\ \n',
    [],
    (1, "two", None),
    {"a": [1, {"b": [2.25, None, False]}], "": ""},
]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_give_json_that_reads_back_as_jsons_own(value: Any) -> None:
    assert is_plain(value)
    data = plain_json(value)
    assert data is not None
    assert json.loads(data) == json.loads(json.dumps(value))


class _Text(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        [1, float("-inf")],
        datetime(2026, 1, 1, tzinfo=timezone.utc),
        Decimal("1.5"),
        uuid.UUID(int=1),
        b"bytes",
        {1: "an int key"},
        {"set": {1, 2}},
        _Text("a str subclass"),
        [[[[object()]]]],
    ],
    ids=repr,
)
def test_values_json_writes_its_own_way_are_not_plain(value: Any) -> None:
    assert not is_plain(value)
    assert plain_json(value) is None


def test_unencodable_or_too_deep_plain_looking_values_get_none() -> None:
    assert plain_json("\ud800") is None  # a lone surrogate has no UTF-8
    deep: list[Any] = []
    for _ in range(2000):
        deep = [deep]
    assert plain_json(deep) is None


def test_a_body_of_plain_arguments_reads_back_as_before() -> None:
    message = new_message("t", [1, "é", [2.5]], {"k": {"n": None}}, queue="q")
    encoded = encode(message)
    assert json.loads(encoded.body) == [[1, "é", [2.5]], {"k": {"n": None}}, message.embed]
    assert encoded.plain_headers is encoded.headers
    again = decode(encoded.body, encoded.headers, encoded.content_type, queue="q")
    assert (again.args, again.kwargs, again.id) == (message.args, message.kwargs, message.id)


def test_a_body_with_kombu_typed_values_keeps_kombus_markers() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    message = new_message("t", [when, Decimal("2.5")], queue="q")
    body = json.loads(encode(message).body)
    assert body[0] == [
        {"__type__": "datetime", "__value__": when.isoformat()},
        {"__type__": "decimal", "__value__": "2.5"},
    ]


def _envelope_of(encoded: Any) -> dict[str, Any]:
    return {"body": "e30=", "headers": encoded.headers, "properties": encoded.properties}


def test_an_encoded_message_is_plain_unless_a_kept_header_or_a_float_is_not() -> None:
    bounded = encode(new_message("t", queue="q", time_limit=30))
    assert bounded.plain_headers is bounded.headers
    unbounded = encode(new_message("t", queue="q", time_limit=math.inf))
    assert unbounded.plain_headers is None
    text = envelope_text(_envelope_of(unbounded), unbounded)
    assert text == ENCODER.encode(_envelope_of(unbounded))
    assert kombu_json.loads(text)["headers"]["timelimit"] == [math.inf, None]

    when = datetime(2026, 1, 2, tzinfo=timezone.utc)
    message = new_message("t", queue="q", headers={"x_when": when})
    typed = encode(message)
    assert typed.plain_headers is None
    text = envelope_text(_envelope_of(typed), typed)
    assert json.loads(text)["headers"]["x_when"] == {
        "__type__": "datetime",
        "__value__": when.isoformat(),
    }


def test_an_envelope_reads_back_as_kombus_own_json_of_it() -> None:
    encoded = encode(new_message("t", ["é"], queue="q", headers={"traceparent": "00-ab"}))
    envelope = _envelope_of(encoded)
    assert encoded.plain_headers is encoded.headers
    text = envelope_text(envelope, encoded)
    assert kombu_json.loads(text) == kombu_json.loads(ENCODER.encode(envelope))


def test_headers_replaced_after_encoding_are_checked_again() -> None:
    encoded = encode(new_message("t", queue="q"))
    when = datetime(2030, 1, 2, tzinfo=timezone.utc)
    replaced = dataclasses.replace(encoded, headers={**encoded.headers, "when": when})
    assert replaced.plain_headers is not replaced.headers
    text = envelope_text(_envelope_of(replaced), replaced)
    assert json.loads(text)["headers"]["when"] == {
        "__type__": "datetime",
        "__value__": when.isoformat(),
    }
    typed_property = dataclasses.replace(encoded, properties={"expiration": Decimal("5")})
    text = envelope_text(_envelope_of(typed_property), typed_property)
    assert json.loads(text)["properties"]["expiration"] == {
        "__type__": "decimal",
        "__value__": "5",
    }


def test_a_plain_envelope_with_a_lone_surrogate_falls_back() -> None:
    encoded = encode(new_message("t", queue="q", headers={"x": "\udc80"}))
    text = envelope_text(_envelope_of(encoded), encoded)
    assert json.loads(text)["headers"]["x"] == "\udc80"


# -- many-row inserts --------------------------------------------------------------------


def _table(width: int) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    columns = ", ".join(f"c{i}" for i in range(width))
    conn.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})")
    conn.execute("CREATE UNIQUE INDEX t_c0 ON t (c0)")
    return conn


@pytest.mark.parametrize("width", [1, 3, 20, MAX_PARAMETERS // 2 + 1, MAX_PARAMETERS])
def test_insert_rows_inserts_every_row_in_order_across_statements(width: int) -> None:
    conn = _table(width)
    head = f"INSERT INTO t ({', '.join(f'c{i}' for i in range(width))})"
    count = 2 * (MAX_PARAMETERS // width) + 3  # three statements, the last short
    rows = [(f"row{n}", *range(width - 1)) for n in range(count)]
    assert insert_rows(conn, head, rows, width) == count
    assert [r[0] for r in conn.execute("SELECT c0 FROM t ORDER BY id")] == [r[0] for r in rows]
    assert insert_rows(conn, head, [], width) == 0


def test_insert_rows_counts_only_what_an_or_ignore_insert_added() -> None:
    conn = _table(2)
    head = "INSERT OR IGNORE INTO t (c0, c1)"
    assert insert_rows(conn, head, [(f"k{n}", n) for n in range(600)], 2) == 600
    again = [(f"k{n}", n) for n in range(590, 1100)]  # ten of them exist
    assert insert_rows(conn, head, again, 2) == 500
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1100


# -- records -----------------------------------------------------------------------------


def test_new_record_is_the_record_the_dataclass_makes() -> None:
    made = new_record("id-1", "t", "q", "high", JobStatus.SCHEDULED, 12.5)
    expected = JobRecord(
        id="id-1",
        task="t",
        queue="q",
        priority="high",
        status=JobStatus.SCHEDULED,
        enqueued_at=12.5,
    )
    assert made == expected and hash(made) == hash(expected) and repr(made) == repr(expected)
    assert dataclasses.asdict(made) == dataclasses.asdict(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.status = JobStatus.QUEUED  # type: ignore[misc]
    assert made.evolve(attempts=2).attempts == 2


@pytest.mark.parametrize(
    "record",
    [
        new_record("id-1", "t", "q", "normal", JobStatus.QUEUED, 1796000000.0755894),
        JobRecord(
            id="id-2",
            task="t",
            queue="q",
            status=JobStatus.RUNNING,
            started_at=3.0,
            worker_id="w1",
            attempts=1,
            result_truncated=True,
        ),
        JobRecord(id="id-3", task="t", queue="q", status=JobStatus.SUCCEEDED, result={"a": 1}),
        JobRecord(
            id="id-4",
            task="t",
            queue="q",
            status=JobStatus.FAILED,
            errors=(AttemptError(1, "ValueError", "bad", 5.0, "w"),),
        ),
    ],
    ids=lambda r: r.id,
)
def test_a_redis_records_texts_are_those_of_its_columns(record: JobRecord) -> None:
    columns = record_columns(record, 1 << 20)
    errors = [_error_json(AttemptError.from_value(e)) for e in columns.pop("errors")]
    assert _record_texts(record, 1 << 20) == (_texts(columns), errors)
