"""JSON for plain values through pydantic-core's serializer, several times faster than
``json``'s on the per-job path (a job's body, its kombu envelope, its record).

"Plain" means what JSON holds as it is: ``str``, ``int``, ``bool``, ``None``, finite
``float``, and ``dict`` (``str`` keys), ``list`` and ``tuple`` of them, by exact type.
For those values the text parses back to what ``json.dumps`` gives; it differs only in
spacing and in leaving non-ASCII characters unescaped (UTF-8). Anything else, including
a ``str`` subclass, a ``datetime`` that pydantic-core would write its own way rather than
as kombu's ``{"__type__": ...}`` marker, a non-finite float (``json`` writes ``NaN``) or a
lone surrogate, gets ``None``: the caller then uses its ``json`` encoder, so such values
are written exactly as before.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticSerializationError, to_json

__all__ = ["is_plain", "plain_json"]

_SCALARS = frozenset({str, int, bool, type(None)})


def is_plain(value: Any) -> bool:
    """Whether ``value`` is plain (see the module's text); nesting deeper than the
    interpreter's recursion limit is not."""
    try:
        return _plain(value)
    except RecursionError:
        return False


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return bool(value - value == 0.0)  # NaN and the infinities give NaN
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (type(item) not in _SCALARS and not _plain(item)):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:  # noqa: SIM110 (all() over a generator costs more per call)
            if type(item) not in _SCALARS and not _plain(item):
                return False
        return True
    return False


def plain_json(value: Any) -> bytes | None:
    """The compact UTF-8 JSON of ``value`` if it is plain, else ``None``."""
    if not is_plain(value):
        return None
    try:
        return to_json(value)
    except PydanticSerializationError:  # a lone surrogate has no UTF-8
        return None
