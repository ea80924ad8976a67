"""A few Redis commands over a plain socket, for code that runs inside measured workers.

The latency recorder and the completion counter run in the Celery, Dramatiq, raw kombu
and uno_jobs worker processes. Importing redis-py there would add about 20 MiB to the
resident memory of a worker that does not otherwise load it (Celery and Dramatiq on
RabbitMQ), and the benchmark measures that memory. This client speaks just enough RESP
for ``SET`` and ``RPUSH``: one connection, made on first use (after a fork, in the child
that uses it), and remade once if a command fails on a dead socket.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import BinaryIO
from urllib.parse import urlsplit

__all__ = ["RespClient", "encode_command"]


def encode_command(*args: object) -> bytes:
    """The RESP array of bulk strings for ``args``."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespClient:
    """Sends commands to the Redis database of ``url`` (``redis://host:port/db``)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._db = (parts.path or "/0").strip("/") or "0"
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self._address, timeout=10)
        self._sock, self._pid = sock, os.getpid()
        self._file = sock.makefile("rb")
        self._send(sock, ("SELECT", self._db))
        return sock

    def _send(self, sock: socket.socket, args: tuple[object, ...]) -> bytes:
        sock.sendall(encode_command(*args))
        assert self._file is not None
        line = self._file.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        if line.startswith(b"-"):
            raise RuntimeError(f"Redis: {line[1:].strip().decode(errors='replace')}")
        if line.startswith(b"$") and not line.startswith(b"$-1"):
            self._file.read(int(line[1:]) + 2)  # a bulk reply's body and CRLF
        return line

    def command(self, *args: object) -> bytes:
        """Run one command; returns its first reply line (``+OK``, ``:3``)."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    # A forked child never uses its parent's socket.
                    fresh = self._sock is not None and self._pid == os.getpid()
                    sock = self._sock if fresh and self._sock else self._connect()
                    return self._send(sock, args)
                except (OSError, ConnectionError):
                    self._sock = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
