"""The broker layer: the only place that uses kombu's messaging classes.

``Broker`` is what the queue and the workers talk to; no kombu type leaves this package.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from uno_jobs.broker._consumer import ConsumerThread, Delivery
from uno_jobs.broker._deadletters import QueueSweep, StoredMessage
from uno_jobs.broker._publisher import CapturedCommands, Outgoing, Publisher, UncapturableError
from uno_jobs.broker._spec import BrokerKind, BrokerSpec, parse_broker_url
from uno_jobs.broker._topology import (
    dead_queue_name,
    kombu_queue,
    level_queue_name,
    level_queues,
)
from uno_jobs.errors import BrokerUnavailableError

__all__ = [
    "Broker",
    "BrokerKind",
    "BrokerSpec",
    "ConsumerThread",
    "Delivery",
    "Outgoing",
    "QueueSweep",
    "StoredMessage",
    "UncapturableError",
    "dead_queue_name",
    "level_queue_name",
    "level_queues",
    "parse_broker_url",
]


class Broker:
    """One broker: publishing (pooled, confirmed), consumers, and queue admin."""

    def __init__(self, url: str) -> None:
        self.spec = parse_broker_url(url)
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Broker({self.spec.display!r})"

    @property
    def publisher(self) -> Publisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = Publisher(self.spec)
            return self._publisher

    def publish(
        self, items: Sequence[Outgoing], while_confirming: Callable[[], None] | None = None
    ) -> None:
        """Publish a batch; returns once the broker has it (confirmed on RabbitMQ).

        ``while_confirming`` runs once the messages are sent, while RabbitMQ's confirms
        are on their way (elsewhere right after the publish); its error is raised after
        the confirms were awaited.
        """
        self.publisher.publish(items, while_confirming)

    def capture(self, items: Sequence[Outgoing]) -> CapturedCommands:
        """Redis only: the commands (``LPUSH``, ``PEXPIRE``; keys as they are in Redis)
        that publish ``items``, routed and enveloped as ``publish`` would, for the caller
        to run (``RedisStore.create_and_push``). The queues are declared; nothing else is
        sent.

        Raises:
            UncapturableError: not a Redis broker, or a message needs another command.
        """
        return self.publisher.capture(items)

    def consumer(
        self,
        queues: Sequence[tuple[str, str]],
        prefetch_count: int,
        on_delivery: Callable[[Delivery], None],
        name: str,
        lease_interval: float | None = None,
        cancel_version_key: str | None = None,
    ) -> ConsumerThread:
        """A consumer thread for ``queues`` (not started).

        ``lease_interval``: how often held messages' leases are renewed (Redis, embedded);
        at most a third of the visibility timeout. ``cancel_version_key``: see
        ``ConsumerThread``.
        """
        return ConsumerThread(
            self.spec, queues, prefetch_count, on_delivery, name, lease_interval, cancel_version_key
        )

    def sizes(self, names: Sequence[str]) -> dict[str, int]:
        """Ready messages per broker queue (declaring missing queues)."""
        return self._admin(names, purge=False)

    def purge(self, names: Sequence[str]) -> int:
        """Delete every ready message of these broker queues; returns how many."""
        return sum(self._admin(names, purge=True).values())

    def sweep(self, name: str) -> QueueSweep:
        """A pass over the broker queue ``name`` that re-publishes, moves or drops messages.

        Used on ``q.dead`` to requeue dead letters and to drop old ones; see ``QueueSweep``.
        Nothing is connected until the returned object is entered (``with``).
        """
        return QueueSweep(self.spec, name)

    def restore_unacked(self, keys: Sequence[str]) -> int:
        """Make a dead consumer's unacknowledged messages deliverable now; returns how many.

        ``keys`` are the consumer's ``held_keys()``, reported before it died. An
        ``owner:<id>`` key names the consumer's channel: every message it holds comes back,
        also those fetched after it last reported (Redis: ``Channel.restore_owner``, one
        script; embedded: the channel's leases are cleared). Redis also takes plain
        delivery tags (what workers before owner sets reported): kombu's own restore (one
        ``WATCH``/``MULTI`` transaction per message) puts each one still in the unacked
        hash back on its list. Either way a message is restored as the visibility-timeout
        sweep would restore it later, marked redelivered, and only once. RabbitMQ: 0 (it
        hands messages back when the connection drops).
        """
        if self.spec.kind not in ("redis", "embedded") or not keys:
            return 0
        owners = [k.removeprefix("owner:") for k in keys if k.startswith("owner:")]
        tags = [k for k in keys if not k.startswith("owner:")]
        conn = self.spec.connection()
        try:
            channel: Any = conn.default_channel
            if self.spec.kind == "embedded":
                return sum(int(channel.release_owner(owner)) for owner in owners if owner)
            restored = sum(int(channel.restore_owner(owner)) for owner in owners if owner)
            with channel.conn_or_acquire() as client:
                for tag in tags:
                    # HGET, not HEXISTS: kombu's client adds the key prefix to HGET only.
                    if client.hget(channel.unacked_key, tag) is not None:
                        channel.qos.restore_by_tag(tag, client=client)
                        restored += 1
            return restored
        finally:
            conn.release()

    def delete_queues(self, names: Sequence[str]) -> None:
        """Delete these broker queues and every message in them.

        This broker's publishers forget they declared them, so a later publish declares
        them again instead of sending to a queue that is gone (on Redis kombu would drop
        such a message as undeliverable).
        """
        self._admin(names, purge=False, delete=True)
        with self._lock:
            publisher = self._publisher
        if publisher is not None:
            publisher.forget(names)

    def _admin(self, names: Sequence[str], purge: bool, delete: bool = False) -> dict[str, int]:
        conn = self.spec.connection()
        try:
            conn.ensure_connection(max_retries=1, timeout=self.spec.connect_timeout)
            channel = conn.channel()
            out: dict[str, int] = {}
            for name in names:
                bound = kombu_queue(name)(channel)
                bound.declare()
                if delete:
                    bound.delete()
                    # SQS has no exchanges (kombu's are in memory) and its virtual
                    # exchange_delete would look up the queue just deleted.
                    if self.spec.kind != "sqs":
                        bound.exchange.delete()
                    continue
                if purge and self.spec.kind == "sqs":
                    # kombu's SQS purge returns its count summed over ten looks.
                    out[name] = int(bound.queue_declare().message_count)
                    bound.purge()
                elif purge:
                    out[name] = int(bound.purge() or 0)
                else:
                    out[name] = int(bound.queue_declare().message_count)
            return out
        except BrokerUnavailableError:
            raise
        except Exception as exc:
            errors = (*tuple(conn.connection_errors), OSError)
            if isinstance(exc, errors):
                raise BrokerUnavailableError(self.spec.display, str(exc)) from None
            raise
        finally:
            conn.release()

    def close(self) -> None:
        with self._lock:
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()
