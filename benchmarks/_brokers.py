# mypy: disallow-untyped-calls=False
# (kombu and Dramatiq's broker classes are only partly typed; this module calls them.)
"""Broker addresses, unique names and clean-up for one benchmark run.

Every run gets a random suffix: its queue names and (on Redis, DB 4) its key prefix carry
it, so a run never touches another run's or a test's keys, and clean-up deletes exactly
what the run made: the RabbitMQ queues and exchanges it named, and the Redis keys under
its prefix (SCAN + DEL, never FLUSHDB).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from kombu.connection import Connection

__all__ = ["DEFAULT_AMQP_URL", "DEFAULT_REDIS_URL", "RunNames", "delete_amqp", "delete_redis"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/4"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass
class RunNames:
    """Unique names for one run, and a record of what to delete at the end.

    Attributes:
        redis_url: Redis database used by every system (``.../4``).
        amqp_url: RabbitMQ URL.
        suffix: Random hex shared by every name of the run.
    """

    redis_url: str = DEFAULT_REDIS_URL
    amqp_url: str = DEFAULT_AMQP_URL
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    amqp_queues: list[str] = field(default_factory=list)
    amqp_exchanges: list[str] = field(default_factory=list)

    @property
    def key_prefix(self) -> str:
        """Prefix of every Redis key of the run (``bench-<suffix>:``)."""
        return f"bench-{self.suffix}:"

    def queue(self, system: str, broker: str, round_no: int) -> str:
        """A queue name unique to this run, system, broker and round."""
        return f"bench_{system}_{broker}_{self.suffix}_{round_no}"

    def done_key(self, queue: str) -> str:
        """The Redis key a Celery/Dramatiq worker writes its completion times to."""
        return f"{self.key_prefix}done:{queue}"

    def uno_url(self, broker: str) -> str:
        """The uno_jobs broker URL (Redis URLs carry the run's ``key_prefix``)."""
        if broker == "embedded":
            return "embedded://"
        if broker == "redis":
            return f"{self.redis_url}?key_prefix={self.key_prefix}"
        return self.amqp_url

    def url(self, broker: str) -> str:
        """The plain broker URL for kombu, Celery and Dramatiq."""
        return self.redis_url if broker == "redis" else self.amqp_url


def delete_redis(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN + DEL); returns how many."""
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
    finally:
        client.close()
    return deleted


def delete_amqp(url: str, queues: Iterable[str], exchanges: Iterable[str]) -> None:
    """Delete these RabbitMQ queues and exchanges; names that do not exist are skipped."""
    with Connection(url, connect_timeout=5) as conn:
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                # A missing name closes the channel (404): use a fresh one per delete.
                channel = conn.channel()
                with contextlib.suppress(conn.channel_errors):
                    if kind == "queue":
                        channel.queue_delete(name)
                    else:
                        channel.exchange_delete(name)
                with contextlib.suppress(Exception):
                    channel.close()
