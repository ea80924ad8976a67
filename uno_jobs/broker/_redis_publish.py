"""The publishing side of uno_jobs' Redis channel: batches in one pipeline, bindings cached.

kombu's Redis channel routes each published message on its own: it reads the exchange's
binding table (``SMEMBERS _kombu.binding.<exchange>``) and then ``LPUSH``es the message,
two round trips per message, so a batch of 1,000 costs 2,000. This channel does two things
instead, and otherwise leaves publishing to kombu (``basic_publish``, its envelope and
delivery tag, its routing through the exchange type, and ``_put``'s priority sub-key,
``_q_for_pri``, and queue-expiry ``PEXPIRE``s), so what Celery workers read is unchanged:

- **Binding tables are cached** per channel for ``BINDING_CACHE_SECONDS`` (one second):
  a lone publish is one round trip, and a batch reads each exchange's table at most once.
  Binding or deleting a queue through the channel drops its exchange's entry at once. A
  binding changed by another connection (another process, or ``Broker``'s admin
  connection deleting a queue) is seen at most that long after; a publish racing a delete
  has no defined outcome anyway (kombu routes it to its undeliverable queue, or to the
  list just emptied), and uno_jobs declares exactly one binding per exchange, the same
  every time. Only tables that have bindings are cached. Reading the table once per batch
  instead would be always fresh, but would keep a lone publish at two round trips.
- **``publish_batch()``**: the ``basic_publish`` calls made inside the block are routed
  as kombu routes them, but their commands are collected (through ``_put``'s
  ``_publish_batch`` argument, kombu ≥ 5.7) and sent at the end of the block in one
  pipeline without ``MULTI`` (a lone command as itself: a pipeline only adds to its cost),
  on one client kept by the channel (kombu makes a client per command); adjacent pushes
  to one list go as one ``LPUSH`` of several values, which leaves the list as the
  separate pushes would. Each ``LPUSH`` reply confirms its messages: every reply is
  checked and any error raises. The other pushes of the batch may have landed then, as
  the earlier ones of a message-by-message publish would have: the caller treats the
  whole batch as failed (``Queue`` deletes its job records; a message that landed still
  runs, as a Celery producer's message without a record does). An error inside the
  block sends nothing.
  With a kombu before 5.7, or with redis-py retries configured (a replayed pipeline
  could push a batch twice: kombu's ``supports_batch_publish``), each message goes out
  on its own, as kombu sends it.
- **``capture(messages)``**: the same envelopes and routing (built by ``_envelope``,
  without kombu's per-message work), but nothing is sent: it returns the commands, keys
  as they are in Redis (global key prefix included), for the caller to run inside a
  script of its own (``Queue`` writes the job records and pushes their messages in one
  atomic script when its job store is the broker's Redis database). Only ``LPUSH`` and
  ``PEXPIRE``: a message through another type of exchange cannot be captured.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.exceptions import ChannelError
from kombu.transport import redis as kombu_redis

from uno_jobs.broker._envelope import direct_route, envelope, envelope_text
from uno_jobs.broker._publisher import CapturedCommands, UncapturableError
from uno_jobs.message import Encoded, random_uuid

__all__ = ["BINDING_CACHE_SECONDS", "PublishChannel", "PublishFailedError"]

#: How long a binding table read from Redis routes messages before it is read again.
BINDING_CACHE_SECONDS = 1.0
# The most messages one merged LPUSH carries.
_MAX_PUSH_VALUES = 1000


class PublishFailedError(redis.ResponseError):
    """Redis answered an error to a command of a publish batch (the first error is the
    cause). A ``ResponseError``, so one of the transport's channel errors, as the reply of a
    lone ``LPUSH`` would be."""


class _Commands:
    """The Redis commands of the messages of one batch, as kombu's ``_put`` and
    ``_put_fanout`` give them (``add(name, *args)``; kombu's own ``PublishBatch`` takes
    them the same way)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


def _merge_pushes(
    commands: list[tuple[str, tuple[Any, ...]]],
) -> list[tuple[str, tuple[Any, ...]]]:
    """Adjacent ``LPUSH``es to one list as one ``LPUSH`` of their values (at most
    ``_MAX_PUSH_VALUES``): Redis pushes the values one after the other, so the list ends
    the same, and one command packs and parses several times faster than many."""
    merged: list[tuple[str, list[Any]]] = []
    for name, args in commands:
        last = merged[-1][1] if merged and merged[-1][0] == "lpush" == name else None
        if last is not None and last[0] == args[0] and len(last) <= _MAX_PUSH_VALUES:
            last.extend(args[1:])
        else:
            merged.append((name, list(args)))
    return [(name, tuple(args)) for name, args in merged]


class PublishChannel(kombu_redis.Channel):
    """kombu's Redis channel with cached binding tables and pipelined batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tables: dict[str, tuple[float, list[tuple[str, ...]]]] = {}
        self._batch: _Commands | None = None
        self._publish_client: Any = None
        super().__init__(*args, **kwargs)

    def _next_delivery_tag(self) -> str:
        # kombu's form (a version-4 UUID), made for a third of ``uuid.uuid4``'s cost: the
        # consumer keys its unacked bookkeeping by it, so it must only be unique.
        return random_uuid()

    # -- bindings ------------------------------------------------------------------------

    def get_table(self, exchange: str) -> list[tuple[str, ...]]:
        """kombu's binding table of ``exchange``, read at most once per
        ``BINDING_CACHE_SECONDS`` (a copy: kombu's ``queue_unbind`` edits what it gets)."""
        now = time.monotonic()
        cached = self._tables.get(exchange)
        if cached is not None and now < cached[0]:
            return list(cached[1])
        table: list[tuple[str, ...]] = super().get_table(exchange)
        if table:
            self._tables[exchange] = (now + BINDING_CACHE_SECONDS, table)
        else:
            self._tables.pop(exchange, None)
        return list(table)

    def forget_bindings(self, exchange: str | None = None) -> None:
        """Drop the cached binding table of ``exchange`` (every one without it)."""
        if exchange is None:
            self._tables.clear()
        else:
            self._tables.pop(exchange, None)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: Any, queue: str) -> None:
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)
        finally:
            self.forget_bindings(exchange)

    def _delete(self, queue: str, exchange: str, *args: Any, **kwargs: Any) -> None:
        try:
            super()._delete(queue, exchange, *args, **kwargs)
        finally:
            self.forget_bindings(exchange)

    # -- batches -------------------------------------------------------------------------

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        if self._batch is not None:
            kwargs["_publish_batch"] = self._batch
        return super().basic_publish(message, exchange, routing_key, **kwargs)

    @contextmanager
    def publish_batch(self) -> Iterator[None]:
        """Collect the messages published in the block; send them in one pipeline at its
        end (module docstring).

        Raises:
            PublishFailedError: Redis answered an error to one or more of the commands.
            redis.ConnectionError: the pipeline could not be sent or its replies read.
        """
        if self._batch is not None:
            raise RuntimeError("a Redis publish batch is open on this channel already")
        if not getattr(self, "supports_batch_publish", False):  # kombu < 5.7: no batches
            yield
            return
        batch = self._batch = _Commands()
        try:
            yield
        finally:
            self._batch = None
        if batch.commands:
            self._send_batch(batch.commands)

    def capture(self, messages: Iterable[tuple[str, Encoded]]) -> CapturedCommands:
        """The commands that publish ``messages`` (routing key, encoded message), without
        sending them (module docstring).

        What kombu's ``Producer.publish`` into this channel would push, where it would
        push it: the envelope of ``_envelope.envelope`` in kombu's JSON, routed through
        the channel's bindings (direct exchanges), to the list of its priority
        (``_q_for_pri``), with kombu's queue-expiry ``PEXPIRE``s; built without kombu's
        per-message work, which costs more than the store's whole create script.

        Raises:
            UncapturableError: an exchange is not a direct one (a fanout's ``PUBLISH``).
        """
        routes: dict[str, list[str]] = {}
        batch = _Commands()
        for routing_key, enc in messages:
            queues = routes.get(routing_key)
            if queues is None:
                try:
                    queues = routes[routing_key] = direct_route(self, routing_key, routing_key)
                except ChannelError as exc:
                    raise UncapturableError(f"Redis publish {exc}") from None
            message = envelope(self, routing_key, routing_key, enc)
            text = envelope_text(message, enc)
            priority = self._get_message_priority(message, reverse=False)
            for queue in queues:
                batch.add("lpush", self._q_for_pri(queue, priority), text)
                if self._expires and queue in self._expires:
                    for step in self.priority_steps:
                        batch.add("pexpire", self._q_for_pri(queue, step), self._expires[queue])
        prefix = self.global_keyprefix or ""
        return [
            (name, f"{prefix}{args[0]}", args[1:]) for name, args in _merge_pushes(batch.commands)
        ]

    def _send_batch(self, commands: list[tuple[str, tuple[Any, ...]]]) -> None:
        commands = _merge_pushes(commands)
        if self._publish_client is None:
            # kombu's conn_or_acquire makes a client per command, whose construction (its
            # table of reply callbacks) costs more than the round trip. Its class adds the
            # global key prefix, as for kombu's own pushes; the pool is the channel's.
            self._publish_client = self._create_client()
        if len(commands) == 1:  # a lone message: a pipeline would only add to its cost
            name, args = commands[0]
            try:
                getattr(self._publish_client, name)(*args)
            except redis.ResponseError as exc:
                raise PublishFailedError(f"Redis refused a publish: {exc}") from exc
            return
        with self._publish_client.pipeline(transaction=False) as pipe:
            for name, args in commands:
                getattr(pipe, name)(*args)
            replies = pipe.execute(raise_on_error=False)
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if errors:
            raise PublishFailedError(
                f"Redis refused {len(errors)} of the {len(commands)} command(s) of a publish "
                f"batch: {errors[0]}"
            ) from errors[0]
