"""Two measured adjustments to py-amqp connections, applied to uno_jobs' own connections.

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
"""

from __future__ import annotations

import contextlib
import errno
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["buffer_reads", "rpc_timeout", "set_socket_timeout"]

_CHUNK = 65536
_RETRY_ERRNOS = (errno.EAGAIN, errno.EINTR)


def _transport(conn: Any) -> Any:
    # kombu's ``connection`` property connects when not connected: ask first.
    if not getattr(conn, "connected", False):
        return None
    return getattr(conn.connection, "transport", None)


def _buffered_read(self: Any, n: int, initial: bool = False) -> bytes:
    rbuf: bytes = self._read_buffer
    recv = self.sock.recv
    try:
        while len(rbuf) < n:
            try:
                chunk = recv(_CHUNK)
            except OSError as exc:
                if exc.errno in _RETRY_ERRNOS:
                    if initial and self.raise_on_initial_eintr:
                        raise TimeoutError() from None
                    continue
                raise
            if not chunk:
                raise OSError("Server unexpectedly closed connection")
            rbuf += chunk
    except BaseException:
        self._read_buffer = rbuf
        raise
    self._read_buffer = rbuf[n:]
    return rbuf[:n]


def buffer_reads(conn: Any) -> None:
    """Make a connected kombu AMQP connection read the socket in chunks."""
    transport = _transport(conn)
    if transport is not None and hasattr(transport, "_read_buffer") and transport.sock:
        transport._read = types.MethodType(_buffered_read, transport)


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
