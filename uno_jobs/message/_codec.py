"""A :class:`~uno_jobs.message.Message` as a Celery task message (protocol v2, JSON).

:func:`encode` turns a message into the body, headers and properties that Celery 5 itself
publishes (``celery.app.amqp.AMQP.as_task_v2``), so a Celery worker can run a job
enqueued by uno_jobs; :func:`decode` reads what Celery's ``send_task`` publishes, so an
uno_jobs worker can run a job enqueued by Celery (DESIGN.md §2, "Wire format"), and
checks every header it turns into a field, failing with a :class:`MessageError` whose
``reason`` is the dead-letter reason. :func:`dead_letter_headers` are the headers of a
message re-published to a dead-letter queue.

The body is the UTF-8 JSON array ``[args, kwargs, embed]``. Values that kombu's JSON
serializer wraps as ``{"__type__": ..., "__value__": ...}`` (datetime, date, time, Decimal,
UUID, bytes) are unwrapped on decode and wrapped on encode, exactly as a Celery worker and
producer do, so such arguments survive a move between the two. Only
``application/json`` is accepted; pickle and every other content type are refused before
the body is looked at.

This module is on the per-job hot path: plain ``json``, slotted dataclasses, no kombu.
The broker layer hands raw bodies and header mappings in and takes :class:`Encoded` out.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any

from uno_jobs.errors import MessageError, PayloadError
from uno_jobs.message._model import (
    PRIORITY_LEVELS,
    Message,
    default_embed,
    parse_iso,
    parse_priority,
)
from uno_jobs.message._plainjson import is_plain, plain_json

__all__ = [
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Encoded",
    "dead_letter_headers",
    "decode",
    "encode",
    "header_count",
]

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024

# Celery cuts argsrepr/kwargsrepr at this length (AMQP.argsrepr_maxsize).
_REPR_MAX_CHARS = 1024
_DEAD_ERROR_MAX_BYTES = 1024

# Celery 5's producer also sends ``shadow``, ``group_index``, ``ignore_result``,
# ``replaced_task_nesting``, ``stamped_headers`` and ``stamps``, each at a value a Celery
# worker assumes when the header is missing; uno_jobs leaves them out (each costs py-amqp
# time on every publish and decode). ``ignore_result`` matters: a missing one lets the
# Celery task's own setting decide, where ``False`` would make it store its result. A
# message that came from Celery keeps what Celery set, through ``extra_headers``.

# Headers the broker or kombu's transport set on delivery. They describe that delivery
# only; sending ``compression`` back with an uncompressed body would even break it.
# fmt: off
_DELIVERY_HEADERS = frozenset({
    "compression", "x-death", "x-delivery-count",
    "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
    "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
})
# Headers that decode turns into Message fields; the rest go to extra_headers.
_FIELD_HEADERS = frozenset({
    "lang", "task", "id", "eta", "expires", "group", "retries", "timelimit", "root_id",
    "parent_id", "origin", "uno_enqueued_at", "uno_worker_lost", "uno_priority",
})
# fmt: on
_NOT_EXTRA = _FIELD_HEADERS | _DELIVERY_HEADERS


@dataclass(slots=True, frozen=True)
class Encoded:
    """A message ready for a kombu ``Producer.publish``.

    ``properties`` go as keyword arguments beside the body (``correlation_id``,
    ``reply_to``), as Celery passes them.

    ``plain_headers``: set by :func:`encode` to ``headers`` itself when it made them of
    plain JSON values only (``_plainjson.is_plain``). The embedded and Redis channels
    write an envelope's JSON without checking its headers again while ``headers`` is
    still that very dict; a copy made with other headers (``dataclasses.replace``), or an
    ``Encoded`` built another way, has its headers checked.
    """

    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]
    content_type: str
    content_encoding: str
    plain_headers: dict[str, Any] | None = field(default=None, repr=False, compare=False)


# --- JSON with kombu's type markers ------------------------------------------------------


def _marker(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def _to_json(value: Any) -> Any:
    # datetime before date: a datetime is a date too.
    if isinstance(value, datetime):
        return _marker("datetime", value.isoformat())
    if isinstance(value, date):
        return _marker("date", value.isoformat())
    if isinstance(value, dtime):
        return _marker("time", value.isoformat())
    if isinstance(value, Decimal):
        return _marker("decimal", str(value))
    if isinstance(value, uuid.UUID):
        return _marker("uuid", {"hex": value.hex})
    if isinstance(value, (bytes, bytearray)):
        try:
            return _marker("bytes", bytes(value).decode("utf-8"))
        except UnicodeDecodeError:
            return _marker("base64", base64.b64encode(value).decode("ascii"))
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_MARKER_DECODERS: dict[str, Any] = {
    "datetime": datetime.fromisoformat,
    "date": lambda v: datetime.fromisoformat(v).date(),
    "time": dtime.fromisoformat,
    "decimal": Decimal,
    "uuid": lambda v: uuid.UUID(**v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode("ascii")),
}


def _from_marker(obj: dict[str, Any]) -> Any:
    if len(obj) != 2 or "__type__" not in obj or "__value__" not in obj:
        return obj
    kind = obj["__type__"]
    decoder = _MARKER_DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise ValueError(f"unknown kombu JSON type marker {kind!r}")
    try:
        return decoder(obj["__value__"])
    except Exception as exc:  # Decimal and friends raise outside ValueError too
        raise ValueError(f"bad {kind} value {obj['__value__']!r}: {exc}") from None


# One encoder for every call: json.dumps(default=...) would build a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_to_json)


# --- Encoding ------------------------------------------------------------------------


def encode(message: Message, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Encoded:
    """Serialise a message as a Celery protocol v2 task message.

    Args:
        message: The job to send.
        max_bytes: The largest body allowed, in bytes.

    Returns:
        Body, headers and properties for the broker layer to publish.

    Raises:
        PayloadError: The arguments are not JSON-serialisable (the message says whether
            args, kwargs or the embed, and which item), or the body is over ``max_bytes``.
    """
    parts = [message.args, message.kwargs, message.embed]
    body = plain_json(parts)
    if body is None:  # values kombu's JSON writes its own way, or none at all
        try:
            body = _ENCODER.encode(parts).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise PayloadError(_unserialisable(message, exc)) from exc
    if len(body) > max_bytes:
        raise PayloadError(
            f"task {message.task!r} job {message.id}: the encoded message is "
            f"{len(body)} bytes, over the limit of {max_bytes} bytes"
        )
    headers = {
        "lang": "py",
        **message.extra_headers,
        "task": message.task,
        "id": message.id,
        "eta": message.eta,
        "expires": message.expires,
        "group": message.group,
        "retries": message.retries,
        "timelimit": [message.time_limit, message.soft_time_limit],
        "root_id": message.root_id,
        "parent_id": message.parent_id,
        "origin": message.origin,
        "uno_enqueued_at": message.enqueued_at,
        "uno_priority": message.priority,
    }
    if message.worker_lost:
        headers["uno_worker_lost"] = message.worker_lost
    else:
        headers.pop("uno_worker_lost", None)
    headers.pop("compression", None)
    # A repr a producer chose (Celery lets it hide secrets there) is kept as sent.
    if "argsrepr" not in headers:
        headers["argsrepr"] = _short_repr(message.args, len(body))
    if "kwargsrepr" not in headers:
        headers["kwargsrepr"] = _short_repr(message.kwargs, len(body))
    # The fields' own headers are plain by their types (``decode`` checks what it reads);
    # of their floats only a non-finite one is not, and the headers kept as they came
    # are checked.
    plain = is_plain((message.time_limit, message.soft_time_limit, message.enqueued_at)) and (
        not message.extra_headers or is_plain(message.extra_headers)
    )
    return Encoded(
        body=body,
        headers=headers,
        properties={"correlation_id": message.id, "reply_to": ""},
        content_type=CONTENT_TYPE,
        content_encoding=CONTENT_ENCODING,
        plain_headers=headers if plain else None,
    )


def _short_repr(value: list[Any] | dict[str, Any], body_size: int) -> str:
    """Celery's ``argsrepr``: a repr for log lines, at most 1 KiB.

    A large payload is shown item by item until the limit, so the cost stays bounded by
    the part shown rather than growing with the whole payload.
    """
    if body_size <= _REPR_MAX_CHARS:
        text = repr(value)
    else:
        pieces: list[str] = []
        size = 0
        is_dict = isinstance(value, dict)
        items: Iterable[Any] = (
            (f"{k!r}: {v!r}" for k, v in value.items()) if isinstance(value, dict) else value
        )
        for item in items:
            piece = item if is_dict else repr(item)
            pieces.append(piece)
            size += len(piece) + 2
            if size > _REPR_MAX_CHARS:
                break
        text = ("{%s}" if is_dict else "[%s]") % ", ".join(pieces)
    if len(text) > _REPR_MAX_CHARS:
        text = text[: _REPR_MAX_CHARS - 3] + "..."
    return text


def _unserialisable(message: Message, exc: BaseException) -> str:
    """Say which argument could not be serialised; runs on the error path only."""
    where = "the message"
    items: list[tuple[str, Any]] = [(f"args[{i}]", v) for i, v in enumerate(message.args)]
    items += [(f"kwargs[{k!r}]", v) for k, v in message.kwargs.items()]
    items.append(("embed", message.embed))
    for name, value in items:
        try:
            _ENCODER.encode(value)
        except (TypeError, ValueError, RecursionError) as item_exc:
            where, exc = name, item_exc
            break
    return (
        f"task {message.task!r} job {message.id}: {where} is not JSON-serialisable "
        f"({type(exc).__name__}: {exc})"
    )


# --- Decoding ------------------------------------------------------------------------


def decode(
    body: bytes | str | Any,
    headers: Mapping[str, Any] | None,
    content_type: str | None,
    content_encoding: str | None = CONTENT_ENCODING,
    *,
    queue: str,
    priority: str = "normal",
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Message:
    """Read a Celery protocol v2 task message.

    Protocol v1 messages (the task in a dict body, Celery 3's format) are refused:
    Celery sends v2 by default since 4.0.

    Args:
        body: The raw body (bytes or str), or the ``[args, kwargs, embed]`` list when the
            transport decoded it already (no size check is possible then).
        headers: The message headers.
        content_type: Must be ``application/json``.
        content_encoding: ``utf-8`` (or missing).
        queue: The logical queue the message was consumed from.
        priority: The level of the broker queue it came from; the ``uno_priority``
            header wins when it names a level.
        max_bytes: The largest body accepted.

    Returns:
        The message.

    Raises:
        MessageError: The message cannot be run; ``reason`` is ``content_type_disallowed``,
            ``too_large``, ``decode_error`` or ``invalid_message``, and ``job_id`` is the
            ``id`` header when it is readable.
    """
    job_id = headers.get("id") if headers is not None else None
    if not isinstance(job_id, str) or not job_id:
        job_id = None
    _check_content_type(content_type, content_encoding, job_id)
    payload = _load(body, max_bytes, job_id) if isinstance(body, (bytes, str)) else body
    if isinstance(payload, (bytearray, memoryview)):
        payload = _load(bytes(payload), max_bytes, job_id)
    args, kwargs, embed = _check_body(payload, job_id)
    if headers is None:
        raise MessageError("invalid_message", "no headers: protocol v2 needs 'task' and 'id'")
    if job_id is None:
        raise MessageError("invalid_message", f"header 'id' is not a job id: {headers.get('id')!r}")
    return _from_headers(headers, job_id, args, kwargs, embed, queue, priority)


def _check_content_type(
    content_type: str | None, content_encoding: str | None, job_id: str | None
) -> None:
    if content_type != CONTENT_TYPE:
        mime = (content_type or "").split(";", 1)[0].strip().lower()
        if mime != CONTENT_TYPE:
            raise MessageError(
                "content_type_disallowed",
                f"content type {content_type!r} is refused: only {CONTENT_TYPE} is accepted",
                job_id,
            )
    if content_encoding is not None and content_encoding != CONTENT_ENCODING:  # noqa: SIM102
        # The cheap comparison above covers what kombu and Celery send.
        if content_encoding.strip().lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise MessageError(
                "decode_error", f"content encoding {content_encoding!r} is not utf-8", job_id
            )


def _load(body: bytes | str, max_bytes: int, job_id: str | None) -> Any:
    size = len(body)
    # A str holds at least one byte per character, so only a close call needs encoding.
    if isinstance(body, str) and size <= max_bytes < size * 4:
        size = len(body.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise MessageError(
            "too_large", f"the body is {size} bytes, over the limit of {max_bytes}", job_id
        )
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError("decode_error", f"the body is not UTF-8: {exc}", job_id) from None
    else:
        text = body
    try:
        if "__type__" in text:
            return json.loads(text, object_hook=_from_marker)
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise MessageError("decode_error", f"the body is not valid JSON: {exc}", job_id) from None


def _check_body(
    payload: Any, job_id: str | None
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    if isinstance(payload, dict) and "task" in payload:
        raise MessageError(
            "invalid_message",
            "a Celery protocol v1 message (task in the body) is not supported; "
            "send protocol v2, Celery's default since 4.0",
            job_id,
        )
    if not isinstance(payload, (list, tuple)) or len(payload) != 3:
        raise MessageError(
            "invalid_message",
            f"the body must be [args, kwargs, embed], not a {type(payload).__name__}"
            + (f" of length {len(payload)}" if isinstance(payload, (list, tuple)) else ""),
            job_id,
        )
    args, kwargs, embed = payload
    if not isinstance(args, (list, tuple)):
        raise MessageError("invalid_message", "body[0] (args) must be a list", job_id)
    if not isinstance(kwargs, dict):
        raise MessageError("invalid_message", "body[1] (kwargs) must be an object", job_id)
    if embed is None:
        embed = default_embed()
    elif not isinstance(embed, dict):
        raise MessageError("invalid_message", "body[2] (embed) must be an object or null", job_id)
    return (args if type(args) is list else list(args)), kwargs, embed


def _from_headers(
    headers: Mapping[str, Any],
    job_id: str,
    args: list[Any],
    kwargs: dict[str, Any],
    embed: dict[str, Any],
    queue: str,
    priority: str,
) -> Message:
    get = headers.get
    task = get("task")
    if not isinstance(task, str) or not task:
        raise MessageError("invalid_message", f"header 'task' is not a name: {task!r}", job_id)
    retries = _count(get("retries"), "retries", job_id)
    for name in _STR_HEADERS:
        value = get(name)
        if value is not None and type(value) is not str:
            raise MessageError(
                "invalid_message", f"header {name!r} is not a string: {value!r}", job_id
            )
    eta, expires = get("eta"), get("expires")
    if eta is not None:
        _check_iso("eta", eta, job_id)
    if expires is not None:
        _check_iso("expires", expires, job_id)
    hard, soft = _time_limits(get("timelimit"), job_id)
    level = get("uno_priority")
    return Message(
        id=job_id,
        task=task,
        args=args,
        kwargs=kwargs,
        queue=queue,
        priority=level if level in PRIORITY_LEVELS else parse_priority(priority),
        retries=retries,
        eta=eta,
        expires=expires,
        time_limit=hard,
        soft_time_limit=soft,
        root_id=get("root_id"),
        parent_id=get("parent_id"),
        group=get("group"),
        origin=get("origin"),
        enqueued_at=_enqueued_at(get("uno_enqueued_at"), job_id),
        worker_lost=_count(get("uno_worker_lost"), "uno_worker_lost", job_id),
        extra_headers={k: v for k, v in headers.items() if k not in _NOT_EXTRA},
        embed=embed,
    )


_STR_HEADERS = ("eta", "expires", "root_id", "parent_id", "group", "origin")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _time_limits(value: Any, job_id: str) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(v is None or _is_number(v) for v in value)
    ):
        return value[0], value[1]
    raise MessageError(
        "invalid_message", f"header 'timelimit' is not [hard, soft]: {value!r}", job_id
    )


def _check_iso(name: str, value: str, job_id: str) -> None:
    try:
        parse_iso(value)
    except ValueError:
        raise MessageError(
            "invalid_message", f"header {name!r} is not ISO-8601: {value!r}", job_id
        ) from None


def _enqueued_at(value: Any, job_id: str) -> float | None:
    if value is None or _is_number(value):
        return value  # type: ignore[no-any-return]
    raise MessageError(
        "invalid_message", f"header 'uno_enqueued_at' is not a time: {value!r}", job_id
    )


def header_count(value: Any) -> int | None:
    """``value`` if it is a count (an ``int`` >= 0, not a ``bool``), else ``None``."""
    return value if type(value) is int and value >= 0 else None


def _count(value: Any, header: str, job_id: str) -> int:
    """A count header (``retries``, ``uno_worker_lost``): absent is 0, not a count fails."""
    if value is None:
        return 0
    count = header_count(value)
    if count is None:
        raise MessageError(
            "invalid_message", f"header {header!r} is not a count: {value!r}", job_id
        )
    return count


# --- Dead letters --------------------------------------------------------------------


def dead_letter_headers(
    headers: Mapping[str, Any] | None, *, reason: str, error: str | None, dead_at: float
) -> dict[str, Any]:
    """The headers of a message re-published to a dead-letter queue.

    The original headers are kept (minus those that only describe one delivery, such as
    kombu's ``compression``), made JSON-safe, and ``uno_dead_reason``,
    ``uno_dead_error`` (cut to 1 KiB of UTF-8) and ``uno_dead_at`` are added.

    Args:
        headers: The headers the message arrived with.
        reason: The dead-letter reason (``max_retries_exceeded``, ``unknown_task``, ...).
        error: What went wrong, for a human.
        dead_at: POSIX time of the decision.

    Returns:
        A new header dict; ``headers`` is not changed.
    """
    result = {
        str(k): _json_safe(v) for k, v in (headers or {}).items() if k not in _DELIVERY_HEADERS
    }
    result["uno_dead_reason"] = reason
    result["uno_dead_error"] = None if error is None else _cut_utf8(error, _DEAD_ERROR_MAX_BYTES)
    result["uno_dead_at"] = float(dead_at)
    return result


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    return str(value)


def _cut_utf8(text: str, max_bytes: int) -> str:
    raw = text.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return raw.decode("utf-8")
    marker = "..."
    return raw[: max_bytes - len(marker)].decode("utf-8", "ignore") + marker
