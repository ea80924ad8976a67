"""kombu's virtual-transport envelope of a message, built without kombu's per-message work.

kombu's way from ``Producer.publish`` to a stored message (``prepare_message``,
``basic_publish``'s body encoding, delivery tag and delivery info, the exchange type's
``deliver``, the transport's ``_put``) costs several times what the embedded broker's
insert or the Redis store's create script costs per message. The embedded channel
(``publish_many``) and the Redis channel (``capture``) build the same envelope here and
route it through the channel's own bindings; their tests compare what lands with what
kombu's own publish stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kombu.exceptions import ChannelError
from kombu.utils import json as kombu_json
from pydantic_core import PydanticSerializationError, to_json

from uno_jobs.message._plainjson import is_plain

__all__ = ["ENCODER", "Publishable", "direct_route", "envelope", "envelope_text"]

#: kombu's JSON encoder with its own settings, made once (``kombu_json.dumps`` makes one
#: per call), without the circular-reference check, which costs a quarter of an
#: envelope's encoding: a circular header fails as RecursionError instead of ValueError.
ENCODER = kombu_json.JSONEncoder(check_circular=False)


class Publishable(Protocol):
    """A message ready to publish, as ``Producer.publish`` takes it (``uno_jobs.message.
    Encoded`` is one): the body, its headers, and the properties that go beside them."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    @property
    def properties(self) -> Mapping[str, Any]: ...

    @property
    def content_type(self) -> str: ...

    @property
    def content_encoding(self) -> str: ...


def envelope(
    channel: Any, exchange: str, routing_key: str, message: Publishable, delivery_mode: int = 2
) -> dict[str, Any]:
    """The envelope ``Producer(channel).publish(body, exchange=..., routing_key=...,
    headers=..., content_type=..., content_encoding=..., delivery_mode=..., **properties)``
    hands to the channel's ``_put``: the body in the channel's ``body_encoding``, a fresh
    delivery tag. ``properties`` must not carry ``delivery_info`` (kombu fills that in)."""
    body, used_encoding = channel.encode_body(message.body, channel.body_encoding)
    properties = message.properties
    return {
        "body": body,
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": message.headers,
        "properties": {
            **properties,
            "delivery_mode": delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            # kombu's Producer takes a "priority" property as its priority argument.
            "priority": properties.get("priority") or channel.default_priority,
            "body_encoding": used_encoding,
            "delivery_tag": channel._next_delivery_tag(),
        },
    }


def envelope_text(value: dict[str, Any], message: Publishable) -> str:
    """The JSON text of ``value``, the envelope of ``message``, as kombu's ``loads`` reads
    it back: compact through pydantic-core (``_plainjson``) where it is plain JSON (the
    usual case), else in kombu's own JSON (a header of a type kombu writes with its
    ``__type__`` marker, a non-finite float).

    The headers of an ``Encoded`` that ``encode`` found plain (``plain_headers``) are not
    checked again, nor the rest of the envelope: strings and numbers made here, beside
    the message's properties, which are.
    """
    known_plain = (
        getattr(message, "plain_headers", None) is message.headers
        and type(message.content_type) is str
        and type(message.content_encoding) is str
        and is_plain(message.properties)
    )
    if known_plain or is_plain(value):
        try:
            return to_json(value).decode()
        except PydanticSerializationError:  # a lone surrogate in a string
            pass
    return ENCODER.encode(value)


def direct_route(channel: Any, exchange: str, routing_key: str) -> list[str]:
    """The queues a message to ``exchange`` with ``routing_key`` goes to, as kombu's
    ``basic_publish`` routes it through a direct (or the default) exchange.

    Raises:
        ChannelError: ``exchange`` is another type of exchange (what the channel's
            ``_lookup`` raises for one that is not declared passes through).
    """
    queues = list(channel._lookup(exchange, routing_key))
    if exchange and (kind := channel.typeof(exchange).type) != "direct":
        raise ChannelError(
            f"routes through direct exchanges only; {exchange!r} is a {kind} exchange"
        )
    return queues
