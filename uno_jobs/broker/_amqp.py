"""Measured adjustments to py-amqp connections, applied to uno_jobs' own connections.

1. **Buffered frame reads.** py-amqp reads each frame with three exact-size ``recv`` calls
   (header, payload, end octet): nine system calls per message, each releasing and
   re-taking the GIL that the worker's other threads are waiting for. A transport here
   reads what the socket has (up to ``_CHUNK`` bytes) and serves frames from that buffer,
   keeping py-amqp's ``_read_buffer`` contract (leftover bytes live there), so its
   timeout handling in ``read_frame`` stays correct.
2. **The consumer's tick as the socket timeout.** py-amqp sets and restores the socket
   timeout around every frame read unless it already equals the one asked for; the
   consumer thread polls with a fixed tick, so that tick becomes the socket's own timeout.
   Calls that wait for a broker reply (consume, cancel, declare, confirmed publish) run
   inside ``rpc_timeout``, which lends them a long timeout for their duration.
3. **A faster frame reader** on a consumer's connection (``read_frames``): a message's
   properties read by ``_amqp_frames.read_properties`` instead of py-amqp's generic
   table reader.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import Any

from uno_jobs.broker._amqp_frames import FrameReader

__all__ = ["buffer_reads", "read_frames", "rpc_timeout", "set_socket_timeout"]

_CHUNK = 65536
_RETRY_ERRNOS = (errno.EAGAIN, errno.EINTR)


def _amqp_connection(conn: Any) -> Any:
    """The py-amqp connection under a kombu connection, or ``None`` if it is not connected
    (kombu's ``connection`` property would connect: ask first)."""
    if not getattr(conn, "connected", False):
        return None
    return conn.connection


def _transport(conn: Any) -> Any:
    return getattr(_amqp_connection(conn), "transport", None)


class _BufferedReader:
    """A transport's ``_read``: frames served from what one ``recv`` brought.

    The unread bytes are ``buf[pos:]``: a read slices out what it returns and moves
    ``pos``, so a 64 KiB chunk holding a hundred messages is not copied again for each of
    their frames (a plain ``rbuf = rbuf[n:]`` copies the rest of the chunk at every read:
    about 30 µs of copying per message). py-amqp's contract holds: when a read fails, the
    unread bytes are in ``transport._read_buffer``, where ``read_frame`` puts a partial
    frame back in front of them after a timeout, and the next read starts there.
    """

    __slots__ = ("buf", "pos", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.buf: bytes = transport._read_buffer
        self.pos = 0
        transport._read_buffer = b""

    def __call__(self, n: int, initial: bool = False) -> bytes:
        transport = self.transport
        if transport._read_buffer:  # handed back by read_frame after a timeout
            self.buf = transport._read_buffer + self.buf[self.pos :]
            self.pos = 0
            transport._read_buffer = b""
        buf, pos = self.buf, self.pos
        end = pos + n
        if end <= len(buf):
            self.pos = end
            return buf[pos:end]
        rest = buf[pos:]
        recv = transport.sock.recv
        try:
            while len(rest) < n:
                try:
                    chunk = recv(_CHUNK)
                except OSError as exc:
                    if exc.errno in _RETRY_ERRNOS:
                        if initial and transport.raise_on_initial_eintr:
                            raise TimeoutError() from None
                        continue
                    raise
                if not chunk:
                    raise OSError("Server unexpectedly closed connection")
                rest += chunk
        except BaseException:
            self.buf, self.pos = b"", 0
            transport._read_buffer = rest
            raise
        self.buf, self.pos = rest, n
        return rest[:n]


def buffer_reads(conn: Any) -> None:
    """Make a connected kombu AMQP connection read the socket in chunks."""
    transport = _transport(conn)
    if transport is not None and hasattr(transport, "_read_buffer") and transport.sock:
        transport._read = _BufferedReader(transport)


def read_frames(conn: Any) -> None:
    """Make a connected kombu AMQP connection turn frames into methods and messages with
    ``_amqp_frames.FrameReader`` (a faster reader of a message's properties). Call it
    before any delivery is on its way: a message py-amqp's handler has half read would
    be lost with it."""
    amqp_conn = _amqp_connection(conn)
    if amqp_conn is not None and hasattr(amqp_conn, "on_inbound_method"):
        amqp_conn.on_inbound_frame = FrameReader(amqp_conn, amqp_conn.on_inbound_method)


def set_socket_timeout(conn: Any, seconds: float | None) -> None:
    transport = _transport(conn)
    sock = getattr(transport, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


@contextlib.contextmanager
def rpc_timeout(conn: Any, seconds: float, restore: float | None) -> Iterator[None]:
    """Run broker calls that wait for a reply with ``seconds`` as the socket timeout."""
    set_socket_timeout(conn, seconds)
    try:
        yield
    finally:
        set_socket_timeout(conn, restore)
