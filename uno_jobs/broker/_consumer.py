"""The consumer thread: the one owner of a worker's broker connection.

Executors never touch the broker. They ask this thread to ack, reject or publish through
a command queue that it drains between ``drain_events`` calls. The in-flight window is the
channel's prefetch count (``basic_qos``): running jobs stay unacknowledged until their
outcome is recorded, so the broker never hands this worker more than
``prefetch_count`` messages at a time, on every transport.

If the connection drops, the thread reconnects with backoff; the messages it held are
redelivered by the broker (RabbitMQ at once, Redis and the embedded broker after their
visibility timeout), and acks for them become no-ops here.

What kombu cannot turn into a message never drops the connection: a stray item in a
Redis list or a garbage row of the embedded broker (those channels remove it and call
their ``on_invalid_envelope`` hook, which this thread sets), a body whose ``compression``
header lies, an envelope whose headers or content type are of the wrong kind. Each is an
*invalid envelope*: logged once (the queue and the raw item cut to 1 KiB), counted in
``ConsumerThread.invalid_envelopes`` and removed from the broker. (A readable message
with a bad body or headers is not one: the worker dead-letters it.) Reconnecting would
not help: the broker would hand the same item back, forever.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kombu.connection import Connection
from kombu.messaging import Consumer as KombuConsumer

from uno_jobs.broker._amqp import buffer_reads, read_frames, rpc_timeout, set_socket_timeout
from uno_jobs.broker._publisher import Outgoing, PublishSession
from uno_jobs.broker._spec import BrokerSpec, sqs_visibility_seconds
from uno_jobs.broker._topology import kombu_queue
from uno_jobs.errors import BrokerUnavailableError

__all__ = ["ConsumerThread", "Delivery"]

log = logging.getLogger("uno_jobs.broker")

_TICK_SECONDS = 0.05
_MIN_BACKOFF_SECONDS = 0.5
# A worker is consuming again within this (plus one connect) of the broker's return.
_MAX_BACKOFF_SECONDS = 5.0
_WATCHDOG_SECONDS = 5.0
_LOG_RAW_BYTES = 1024


@dataclass(slots=True)
class Delivery:
    """A message handed to the worker. Holds no kombu object."""

    tag: int
    routing_key: str
    level: str
    body: Any
    headers: dict[str, Any]
    content_type: str | None
    content_encoding: str | None
    redelivered: bool
    #: The job store's cancellations version read when the broker handed the message
    #: out (uno_jobs' Redis channel, see ``ConsumerThread``), else ``None``.
    cancel_version: int | None = None


class ConsumerThread(threading.Thread):
    """Consumes the level queues of one logical queue and serves ack/reject/publish.

    Args:
        spec: The broker.
        queues: ``(broker queue, level)`` pairs in start order.
        prefetch_count: The in-flight window (running + prefetched messages).
        on_delivery: Called in this thread for every message received; must not block.
        name: Thread name (the worker id).
        lease_interval: How often held messages' leases are renewed (Redis, embedded).
        cancel_version_key: A job store's cancellations version key, on the Redis broker's
            own database (``RedisStore.cancel_version_key``): the channel reads it with each
            fetch, and each delivery carries the value (``Delivery.cancel_version``).
    """

    def __init__(
        self,
        spec: BrokerSpec,
        queues: Sequence[tuple[str, str]],
        prefetch_count: int,
        on_delivery: Callable[[Delivery], None],
        name: str,
        lease_interval: float | None = None,
        cancel_version_key: str | None = None,
    ) -> None:
        super().__init__(name=f"uno-consumer-{name}", daemon=True)
        self._cancel_version_key = cancel_version_key
        third = spec.visibility_timeout / 3
        self._lease_interval = min(lease_interval, third) if lease_interval else third
        self.spec = spec
        self._queues = list(queues)
        self._levels = dict(queues)
        self._prefetch = prefetch_count
        self._on_delivery = on_delivery
        self._commands: deque[Callable[[], None]] = deque()
        self._commands_ready = threading.Event()
        self._held: dict[int, Any] = {}
        self._lease_owner = ""  # the Redis or embedded channel's, set at connect
        # Acks of one command round, sent together: AMQP with ``multiple`` where possible,
        # Redis in one pipeline (``basic_ack_many`` of uno_jobs' Redis channel).
        self._acks: list[Any] = []
        self._amqp = spec.kind == "amqp"
        self._batch_acks = self._amqp or spec.kind == "redis"
        self._next_tag = 0
        self._stopping = threading.Event()
        self._consuming_wanted = True
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._conn: Connection | None = None
        self._consumer: KombuConsumer | None = None
        self._session: PublishSession | None = None
        self.connected = False
        #: Items kombu could not make a message of, dropped (see the module docstring).
        self.invalid_envelopes = 0
        #: Connections lost and made again since the thread started.
        self.reconnects = 0
        self.last_activity = time.monotonic()
        self._leases_kept_at = time.monotonic()
        self._watchdog_at = time.monotonic()

    # -- called from other threads -------------------------------------------------------

    def start_and_wait(self) -> None:
        """Start the thread and return once it is consuming.

        Raises:
            BrokerUnavailableError: the first connection failed.
        """
        self.start()
        self._ready.wait()
        if self._start_error is not None:
            self.join(timeout=5)
            raise self._start_error

    def ack(self, tag: int) -> None:
        self._command(lambda: self._settle(tag, ack=True))

    def reject(self, tag: int, requeue: bool) -> None:
        self._command(lambda: self._settle(tag, ack=False, requeue=requeue))

    def publish_then_ack(self, tag: int, item: Outgoing) -> None:
        """Publish ``item`` (e.g. to ``q.dead``), then ack ``tag`` once it is confirmed.

        If the publish fails the message is not acked, so the broker delivers it again.
        """
        self._command(lambda: self._publish_then_ack(tag, item))

    def set_consuming(self, wanted: bool) -> None:
        """Stop or restart taking new messages (pause/resume)."""
        self._command(lambda: self._apply_consuming(wanted))

    def stop(self, timeout: float = 10.0) -> None:
        """Hand back every held message, close the connection and end the thread."""
        self._stopping.set()
        self.join(timeout)

    @property
    def held(self) -> int:
        return len(self._held)

    def held_keys(self) -> list[str]:
        """What identifies the held messages to ``Broker.restore_unacked``.

        Redis and embedded: ``owner:<id>``, the owner id of the channel (of the last one,
        while reconnecting), whether it holds messages or not: whatever it fetches later
        is found through it, so a worker that dies after its last report loses no time on
        its jobs. RabbitMQ and SQS: empty (the broker hands messages back by itself).
        """
        owner = self._lease_owner
        return [f"owner:{owner}"] if owner and self.spec.kind in ("redis", "embedded") else []

    @property
    def deliveries(self) -> int:
        """Messages handed to ``on_delivery`` since the thread started (redeliveries too)."""
        return self._next_tag

    # -- the thread ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._connect()
        except BaseException as exc:
            self._start_error = (
                exc
                if isinstance(exc, BrokerUnavailableError)
                else BrokerUnavailableError(self.spec.display, f"{type(exc).__name__}: {exc}")
            )
            self._ready.set()
            return
        self._ready.set()
        backoff = _MIN_BACKOFF_SECONDS
        while not self._stopping.is_set():
            try:
                self._run_commands()
                self._drain()
                self._keep_leases()
                self._watchdog()
                backoff = _MIN_BACKOFF_SECONDS
            except Exception as exc:
                if self._stopping.is_set():
                    break
                log.warning(
                    "broker connection lost (%s: %s); reconnecting in %.1f s",
                    type(exc).__name__,
                    exc,
                    backoff,
                    extra={"broker": self.spec.display},
                )
                self._drop_connection()
                self.reconnects += 1
                next_backoff = self._reconnect(backoff)
                if next_backoff is None:
                    break
                backoff = next_backoff
        self._shutdown()

    def _reconnect(self, backoff: float) -> float | None:
        """Connect again, waiting ``backoff`` before each try (doubled every time, capped).

        Returns the next backoff once connected (a connection that fails at once still
        backs off), or ``None`` when the thread is stopping. The cap keeps a worker
        consuming within seconds of a broker's return, however long the outage was.
        """
        while True:
            if self._stopping.wait(backoff):
                return None
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
            try:
                self._connect()
                return backoff
            except Exception as exc:
                self._drop_connection()  # whatever part of it was made
                log.warning(
                    "reconnecting failed (%s); next try in %.1f s",
                    exc,
                    backoff,
                    extra={"broker": self.spec.display},
                )

    def _watchdog(self) -> None:
        """Reconnect a consumer that receives nothing while its queues have jobs ready.

        A transport can be left waiting on a dead socket without raising (kombu's Redis
        poller swallows some connection errors when it is driven by ``drain_events``).
        Every few seconds of silence, with room in the window, ask the broker whether
        jobs are waiting; if they are, the connection is stale: raise to reconnect. A
        dead connection fails the question itself, which reconnects too.
        """
        now = time.monotonic()
        if (
            not self._consuming_wanted
            or now - self.last_activity < _WATCHDOG_SECONDS
            or now - self._watchdog_at < _WATCHDOG_SECONDS
            or len(self._held) >= self._prefetch
        ):
            return
        self._watchdog_at = now
        assert self._conn is not None
        channel = self._conn.default_channel
        waiting = 0
        with self._rpc():
            for name, _ in self._queues:
                waiting += kombu_queue(name)(channel).queue_declare().message_count
        if waiting and time.monotonic() - self.last_activity >= _WATCHDOG_SECONDS:
            raise ConnectionError(
                f"{waiting} job(s) waiting but nothing received for "
                f"{now - self.last_activity:.0f} s: the connection is stale"
            )

    def _keep_leases(self) -> None:
        """Keep held messages from being redelivered while this worker is alive.

        Redis (kombu's transport) redelivers a message whose entry in its unacked index is
        older than the visibility timeout; the embedded transport one whose lease ran out.
        Held messages are refreshed every third of the timeout, also while the window is
        full and nothing is polled. SQS makes a received message visible again when its
        visibility timeout ends, and kombu never extends it: held messages get a new
        timeout (``ChangeMessageVisibilityBatch``, ten per call). (RabbitMQ redelivers only
        when the connection closes.)
        """
        if self.spec.kind not in ("redis", "embedded", "sqs") or not self._held:
            return
        now = time.monotonic()
        if now - self._leases_kept_at < self._lease_interval:
            return
        self._leases_kept_at = now
        assert self._conn is not None
        channel: Any = self._conn.default_channel
        if self.spec.kind == "embedded":
            channel.extend_leases()
            return
        if self.spec.kind == "sqs":
            self._extend_sqs_visibility(channel)
            return
        channel.keep_leases([message.delivery_tag for message in self._held.values()])

    def _extend_sqs_visibility(self, channel: Any) -> None:
        by_queue: dict[str, list[str]] = {}
        for message in self._held.values():
            info = message.delivery_info or {}
            url = info.get("sqs_queue")
            if url:
                by_queue.setdefault(url, []).append(message.delivery_tag)
        timeout = sqs_visibility_seconds(self.spec.visibility_timeout)
        client = channel.sqs()
        for url, handles in by_queue.items():
            for start in range(0, len(handles), 10):
                entries = [
                    {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": timeout}
                    for i, handle in enumerate(handles[start : start + 10])
                ]
                reply = client.change_message_visibility_batch(QueueUrl=url, Entries=entries)
                for failed in reply.get("Failed", ()):
                    # Already acked, or its receipt expired: SQS hands it out again.
                    log.warning("could not extend an SQS message's visibility: %s", failed)

    def _command(self, func: Callable[[], None]) -> None:
        self._commands.append(func)
        self._commands_ready.set()

    def _drain(self) -> None:
        """Wait for messages, or for commands when the window is full.

        With the in-flight window full the broker sends nothing until an ack frees a
        slot, so waiting in ``drain_events`` would only delay those acks by a tick: wait
        for the next command instead.
        """
        assert self._conn is not None
        if len(self._held) >= self._prefetch or not self._consuming_wanted:
            if self._commands_ready.wait(_TICK_SECONDS):
                self._commands_ready.clear()
            return
        with contextlib.suppress(TimeoutError):
            self._conn.drain_events(timeout=_TICK_SECONDS)

    def _run_commands(self) -> None:
        commands = self._commands
        while commands:
            commands.popleft()()
        if self._acks:
            self._flush_acks()

    def _flush_acks(self) -> None:
        """Send this round's acks. Redis: one pipeline removes them all from the unacked
        hash and index. AMQP: one ``multiple`` ack below the oldest held tag.

        A ``multiple`` ack of tag T settles every delivery up to T on the channel, so it
        may only cover tags lower than every message still held unacknowledged.
        """
        acks, self._acks = self._acks, []
        if not self._amqp:
            acks[0].channel.basic_ack_many([m.delivery_tag for m in acks])
            return
        tags = sorted(m.delivery_tag for m in acks)
        oldest_held = min((m.delivery_tag for m in self._held.values()), default=None)
        channel = acks[0].channel
        covered = [t for t in tags if oldest_held is None or t < oldest_held]
        if len(covered) > 1:
            channel.basic_ack(covered[-1], multiple=True)
        elif covered:
            channel.basic_ack(covered[0])
        for tag in tags[len(covered) :]:
            channel.basic_ack(tag)

    def _connect(self) -> None:
        conn = self.spec.connection()
        try:
            conn.ensure_connection(max_retries=1, timeout=self.spec.connect_timeout)
        except Exception as exc:
            conn.release()
            raise BrokerUnavailableError(
                self.spec.display, f"{type(exc).__name__}: {exc}"
            ) from None
        self._conn = conn
        channel = conn.default_channel
        self._lease_owner = str(getattr(channel, "lease_owner", "") or "")
        queues = [kombu_queue(name)(channel) for name, _ in self._queues]
        for queue in queues:
            queue.declare()
        # on_message hands over the raw message: the body is decoded once, by the worker.
        self._consumer = KombuConsumer(
            channel,
            queues=queues,
            on_message=self._receive,
            accept=None,
            no_ack=False,
            on_decode_error=self._undecodable,
        )
        if self._cancel_version_key is not None and hasattr(channel, "cancel_version_key"):
            channel.cancel_version_key = self._cancel_version_key
        if hasattr(channel, "on_invalid_envelope"):
            # The embedded and Redis channels remove what is no message; the report is ours.
            hook: Any = channel
            hook.on_invalid_envelope = self._invalid_envelope
        if self._amqp:
            read_frames(conn)  # before any delivery: no message is half read yet
        self._consumer.qos(prefetch_count=self._prefetch)
        self._session = PublishSession(self.spec, connection=conn)
        if self._consuming_wanted:
            self._consumer.consume()
        if self._amqp:
            buffer_reads(conn)
            set_socket_timeout(conn, _TICK_SECONDS)
        self.connected = True
        self.last_activity = time.monotonic()

    def _drop_connection(self) -> None:
        self.connected = False
        self._held.clear()
        self._acks.clear()  # the broker redelivers them; late acks become no-ops
        self._consumer = None
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:
                log.debug("releasing a broken connection failed", exc_info=True)
            self._conn = None

    def _rpc(self) -> contextlib.AbstractContextManager[None]:
        """Broker calls that wait for a reply get a long socket timeout meanwhile."""
        if not self._amqp or self._conn is None:
            return contextlib.nullcontext()
        return rpc_timeout(self._conn, self.spec.confirm_timeout, _TICK_SECONDS)

    def _receive(self, message: Any) -> None:
        info = message.delivery_info or {}
        routing_key = info.get("routing_key") or self._queues[0][0]
        self.last_activity = time.monotonic()
        headers, content_type, encoding = (
            message.headers,
            message.content_type,
            message.content_encoding,
        )
        # AMQP frames always have these right; a virtual transport's JSON envelope may not.
        if not isinstance(headers, dict):
            problem = f"its headers are a {type(headers).__name__}, not a table"
        elif not isinstance(content_type, (str, type(None))):
            problem = f"its content type is a {type(content_type).__name__}: {content_type!r}"
        elif not isinstance(encoding, (str, type(None))):
            problem = f"its content encoding is a {type(encoding).__name__}: {encoding!r}"
        else:
            self._next_tag += 1
            tag = self._next_tag
            self._held[tag] = message
            self._on_delivery(
                Delivery(
                    tag=tag,
                    routing_key=routing_key,
                    level=self._levels.get(routing_key, "normal"),
                    body=message.body,
                    headers=dict(headers),
                    content_type=content_type,
                    content_encoding=encoding,
                    redelivered=_redelivered(info),
                    cancel_version=getattr(message, "cancel_version", None),
                )
            )
            return
        self._invalid_envelope(routing_key, message.body, problem)
        message.reject(requeue=False)

    def _undecodable(self, message: Any, exc: Exception) -> None:
        """kombu could not read a message's body: its ``compression`` header names a codec
        the body is not in (kombu calls this instead of ``on_message``)."""
        info = message.delivery_info or {}
        queue = info.get("routing_key") or self._queues[0][0]
        compression = (message.headers or {}).get("compression")
        problem = f"the body does not decompress as {compression!r} ({type(exc).__name__}: {exc})"
        self._invalid_envelope(queue, message.body, problem)
        message.reject(requeue=False)

    def _invalid_envelope(self, queue: str, raw: object, problem: str) -> None:
        """Log and count an item kombu could not make a message of; it is already gone."""
        self.invalid_envelopes += 1
        self.last_activity = time.monotonic()
        log.error(
            "dropped an invalid envelope from queue %s: %s; raw: %r",
            queue,
            problem,
            _cut(raw),
            extra={"broker": self.spec.display, "queue": queue},
        )

    def _settle(self, tag: int, ack: bool, requeue: bool = False) -> None:
        message = self._held.pop(tag, None)
        if message is None:
            return  # held before a reconnect: the broker has it again
        self.last_activity = time.monotonic()
        if ack:
            if self._batch_acks:
                self._acks.append(message)
            else:
                message.ack()
        else:
            message.reject(requeue=requeue)

    def _publish_then_ack(self, tag: int, item: Outgoing) -> None:
        if tag not in self._held:
            return
        assert self._session is not None
        try:
            with self._rpc():
                self._session.publish([item])
        except BrokerUnavailableError:
            log.warning("publish to %s failed; the message will be redelivered", item.routing_key)
            raise
        self._settle(tag, ack=True)

    def _apply_consuming(self, wanted: bool) -> None:
        self._consuming_wanted = wanted
        consumer = self._consumer
        if consumer is None:
            return
        with self._rpc():
            if wanted:
                consumer.consume()
            else:
                consumer.cancel()

    def _shutdown(self) -> None:
        try:
            self._run_commands()
            if self._consumer is not None:
                with self._rpc():
                    self._consumer.cancel()
            for tag in list(self._held):
                self._settle(tag, ack=False, requeue=True)
        except Exception:
            log.debug("handing back messages at shutdown failed", exc_info=True)
        self._drop_connection()


def _redelivered(info: dict[str, Any]) -> bool:
    """Whether the broker delivered this message before. SQS does not say so in kombu's
    ``redelivered``; its ``ApproximateReceiveCount`` attribute (which kombu fetches) does."""
    if info.get("redelivered"):
        return True
    sqs_message = info.get("sqs_message")
    if isinstance(sqs_message, dict):
        count = (sqs_message.get("Attributes") or {}).get("ApproximateReceiveCount")
        try:
            return int(count or 0) > 1
        except (TypeError, ValueError):
            return False
    return False


def _cut(raw: object) -> bytes:
    """The first KiB of a raw item, as bytes, for a log line."""
    if isinstance(raw, str):
        data = raw.encode("utf-8", "backslashreplace")
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
    else:
        data = repr(raw).encode("utf-8", "backslashreplace")
    return data[:_LOG_RAW_BYTES]
