"""Broker URLs: which transport, which options, and the kombu connection they make."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from ssl import CERT_NONE
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from kombu.connection import Connection

from uno_jobs.broker._sqs import sqs_delay_seconds
from uno_jobs.config import EMBEDDED_SCHEME, embedded_broker_path, redact_url
from uno_jobs.errors import ConfigurationError

__all__ = ["BrokerKind", "BrokerSpec", "parse_broker_url", "sqs_visibility_seconds"]

BrokerKind = Literal["amqp", "redis", "sqs", "embedded", "memory"]

_SCHEMES: dict[str, BrokerKind] = {
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
    "redis": "redis",
    "rediss": "redis",
    "sqs": "sqs",
    EMBEDDED_SCHEME: "embedded",
    # kombu's in-process transport: one process only, for tests (uno_jobs.testing).
    "memory": "memory",
}

# Options a broker URL may carry in its query string, with the kinds they apply to.
_QUERY_OPTIONS: dict[str, tuple[BrokerKind, ...]] = {
    "visibility_timeout": ("redis", "sqs", "embedded"),
    "key_prefix": ("redis",),
    "polling_interval": ("redis", "sqs", "embedded", "memory"),
    "connect_timeout": ("amqp", "redis", "sqs", "embedded", "memory"),
    "confirm_timeout": ("amqp", "redis", "sqs", "embedded", "memory"),
    "restore_interval": ("redis",),
    "region": ("sqs",),
    "wait_time_seconds": ("sqs",),
    "consumer_timeout": ("amqp",),
}

DEFAULT_VISIBILITY_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 4.0
DEFAULT_CONFIRM_TIMEOUT = 10.0
# RabbitMQ's default consumer_timeout (30 minutes); the broker's setting is not readable
# over AMQP, so a raised one is told to uno_jobs with ?consumer_timeout=SECONDS.
DEFAULT_CONSUMER_TIMEOUT = 1800.0
# The expiry of the Redis sweep's lock (see the transport options below); a sweep of a
# few hundred restores takes milliseconds.
RESTORE_LOCK_SECONDS = 5


@dataclass(frozen=True)
class BrokerSpec:
    """A parsed broker URL.

    Attributes:
        url: The URL as given (may hold a password: never log it; use ``display``).
        kind: ``amqp``, ``redis``, ``sqs`` or ``embedded``.
        display: The URL with its password replaced by ``***``.
        visibility_timeout: Seconds before an unacknowledged message of a dead consumer
            is delivered again (Redis, SQS, embedded; RabbitMQ redelivers on disconnect).
        connect_timeout: Seconds to wait for a connection before giving up.
        confirm_timeout: Seconds to wait for a publish to be confirmed.
    """

    url: str = field(repr=False)
    kind: BrokerKind
    display: str
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT
    consumer_timeout: float = DEFAULT_CONSUMER_TIMEOUT
    options: dict[str, str] = field(default_factory=dict)

    @property
    def messaging_system(self) -> str:
        """The OpenTelemetry ``messaging.system`` value of this broker."""
        return {"amqp": "rabbitmq", "redis": "redis", "sqs": "aws_sqs"}.get(
            self.kind, "uno_jobs_embedded"
        )

    def delay_seconds(self, routing_key: str, delay: float) -> int | None:
        """Whole seconds for which this broker itself can hold back a message to
        ``routing_key`` so it arrives no sooner than ``delay`` seconds from now, or
        ``None`` when it cannot and the delay waits in the job store's schedule.

        Only SQS can (``DelaySeconds``, up to 15 minutes, not on FIFO queues); RabbitMQ,
        Redis and the embedded broker have no per-message delay that kombu sends.
        """
        return sqs_delay_seconds(routing_key, delay) if self.kind == "sqs" else None

    def connection(self) -> Connection:
        """A new, not yet connected kombu connection for this broker."""
        if self.kind == "embedded":
            from uno_jobs.broker._embedded import Transport

            return Connection(
                transport=Transport,
                connect_timeout=self.connect_timeout,
                transport_options={
                    "path": str(embedded_broker_path(self.url)),
                    "visibility_timeout": self.visibility_timeout,
                    **_float_options(self.options, "polling_interval"),
                },
            )
        if self.kind == "memory":
            interval = _float_options(self.options, "polling_interval").get("polling_interval")
            return Connection(
                "memory://",
                transport_options={"polling_interval": interval or 0.01},
            )
        base = _without_query(self.url)
        if self.kind == "redis":
            return self._redis_connection(base)
        transport_options: dict[str, Any] = {}
        if self.kind == "sqs":
            transport_options = {
                "visibility_timeout": sqs_visibility_seconds(self.visibility_timeout),
                "is_secure": False,
                # kombu long-polls each queue in turn for up to this long: with four
                # level queues its default of 10 s would delay a job by up to 30 s.
                "wait_time_seconds": int(self.options.get("wait_time_seconds", 1)),
                **_float_options(self.options, "polling_interval"),
            }
            if "region" in self.options:
                transport_options["region"] = self.options["region"]
        return Connection(
            base,
            connect_timeout=self.connect_timeout,
            transport_options=transport_options,
            heartbeat=0,
        )

    def _redis_connection(self, base: str) -> Connection:
        """A connection on uno_jobs' Redis transport (``_redis.py``): kombu's keys and
        message format, messages fetched in batches and recorded as unacked server-side."""
        from uno_jobs.broker._redis import Transport as RedisTransport

        transport_options: dict[str, Any] = {
            "visibility_timeout": self.visibility_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": max(self.confirm_timeout, 5.0),
            # The level queues in the order the consumer gives them, critical first (the
            # fetch script always does this; kombu's own polling honours the option).
            "queue_order_strategy": "priority",
            "unacked_restore_throttle": 1,
            # kombu's sweep holds a lock key around its restores, with this expiry. A
            # worker killed mid-sweep, or a connection cut while the lock is taken or
            # released, leaves the key behind: with kombu's 300 s every restore of every
            # consumer waits five minutes. Each restore is a transaction on the unacked
            # hash, so two sweeps at once restore nothing twice: the lock only saves work.
            "unacked_mutex_expire": RESTORE_LOCK_SECONDS,
            # A poll connection whose reply is overdue by more than brpop_timeout (1 s) +
            # health_check_interval is dropped and made again: a dead socket is noticed in
            # seconds instead of kombu's default 26.
            "health_check_interval": 4,
            "unacked_restore_interval": float(self.options.get("restore_interval", 1.0)),
            **_float_options(self.options, "polling_interval"),
        }
        if "key_prefix" in self.options:
            transport_options["global_keyprefix"] = self.options["key_prefix"]
        # Given a transport class, kombu no longer sees the rediss scheme: do what it does
        # for rediss:// without ssl options (TLS, certificates not verified).
        tls = {"ssl_cert_reqs": CERT_NONE} if urlsplit(base).scheme == "rediss" else False
        return Connection(
            base,
            transport=RedisTransport,
            ssl=tls,
            connect_timeout=self.connect_timeout,
            transport_options=transport_options,
            heartbeat=0,
        )


def sqs_visibility_seconds(seconds: float) -> int:
    """SQS takes whole seconds: a visibility timeout rounded up, at least 1."""
    return max(1, math.ceil(seconds))


def parse_broker_url(url: str) -> BrokerSpec:
    """Parse and validate a broker URL.

    Raises:
        ConfigurationError: unknown scheme or query option, or a bad option value. The
            message names the URL (password redacted) and the option.
    """
    display = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"broker_url {display!r} is not a URL: {exc}") from None
    kind = _SCHEMES.get(parts.scheme)
    if kind is None:
        known = ", ".join(sorted(_SCHEMES))
        raise ConfigurationError(
            f"broker_url {display!r}: unknown scheme {parts.scheme!r} (known: {known})"
        )
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        kinds = _QUERY_OPTIONS.get(key)
        if kinds is None or kind not in kinds:
            allowed = sorted(k for k, v in _QUERY_OPTIONS.items() if kind in v)
            raise ConfigurationError(
                f"broker_url {display!r}: unknown option {key!r} for {kind} "
                f"(allowed: {', '.join(allowed)})"
            )
        options[key] = value
    numbers = _float_options(
        options, "visibility_timeout", "connect_timeout", "confirm_timeout", "consumer_timeout"
    )
    for key in ("polling_interval", "restore_interval"):
        _float_options(options, key)  # validates
    wait = options.get("wait_time_seconds")
    if wait is not None and not (wait.isdigit() and int(wait) <= 20):
        raise ConfigurationError(
            f"broker_url {display!r}: option 'wait_time_seconds' must be a whole number "
            f"of seconds from 0 to 20 (SQS's limit), got {wait!r}"
        )
    if kind == "redis" and "key_prefix" in options and not options["key_prefix"]:
        raise ConfigurationError(f"broker_url {display!r}: option 'key_prefix' is empty")
    return BrokerSpec(
        url=url,
        kind=kind,
        display=display,
        visibility_timeout=numbers.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT),
        connect_timeout=numbers.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        confirm_timeout=numbers.get("confirm_timeout", DEFAULT_CONFIRM_TIMEOUT),
        consumer_timeout=numbers.get("consumer_timeout", DEFAULT_CONSUMER_TIMEOUT),
        options=options,
    )


def _float_options(options: dict[str, str], *names: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        if name not in options:
            continue
        try:
            value = float(options[name])
        except ValueError:
            raise ConfigurationError(
                f"broker option {name!r} must be a number of seconds, got {options[name]!r}"
            ) from None
        if value <= 0:
            raise ConfigurationError(f"broker option {name!r} must be > 0, got {value:g}")
        out[name] = value
    return out


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
