"""The Redis store's hottest Lua scripts, run without redis-py's command path.

``Queue.enqueue`` on Redis is one ``EVALSHA`` of the create script; a worker's batch of
outcomes one of the apply script; a worker's look at the cancelled ids before a lone
delivery one of the cancellations script (``RedisStore.cancellations_quick``). Through a redis-py
``Script`` that call cost ~100 µs of CPU here, most of it not Redis: a pool checkout and
release (a lock and connection-count bookkeeping each way), the retry wrapper, and the
encoding of every argument one by one. ``ScriptRunner`` packs the command itself and
sends it on a connection it keeps from the client's own pool (~35 µs for the same call),
using redis-py's connection for everything else: connecting, authentication, TLS, and
the parser that reads the reply (``decode_responses`` as the client has it).

The kept connection is for one caller at a time; a caller that finds it busy (another
thread in the middle of a call) checks a connection out of the pool as redis-py would.
Nothing is retried: a call whose reply was lost may have run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import redis
from redis.connection import ConnectionPool
from redis.exceptions import NoScriptError

__all__ = ["ScriptRunner", "pack_command"]

Arg = str | bytes | int | float
_T = TypeVar("_T")
# redis-py's connection methods are untyped: its connections are held as Any.
Connection = Any


def _encode(value: Arg) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):  # before int: True is an int, and not what Redis means
        raise TypeError("a Redis script argument cannot be a bool")
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"a Redis script argument cannot be a {type(value).__name__}")


def pack_command(*args: Arg) -> bytes:
    """The RESP array of bulk strings for ``args`` (``str`` as UTF-8)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ScriptRunner:
    """Runs one Lua script by ``EVALSHA`` (``SCRIPT LOAD`` first if Redis lacks it) on a
    connection of ``client``'s pool. Calls are thread-safe; one connection is kept
    between calls and released by ``close``. Error replies raise as redis-py raises them;
    a connection that failed mid-call is disconnected before the error goes on."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self._pool: ConnectionPool = client.connection_pool
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest().encode()
        self._lock = threading.Lock()
        self._kept: Connection | None = None
        self._pid = os.getpid()

    def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        command = pack_command(b"EVALSHA", self._sha, len(keys), *keys, *args)
        connection, release = self._checkout()
        try:
            return self._guarded(connection, lambda: self._reply_to(connection, command))
        finally:
            release()

    def pipeline(self, calls: Iterable[tuple[Sequence[str], Sequence[Arg]]]) -> list[Any]:
        """Run the script once per ``(keys, args)`` of ``calls``, each sent as soon as
        ``calls`` yields it, without waiting for a reply first: Redis runs one call
        while the caller makes the next (``calls`` may be a generator doing that work).
        Returns the replies in order, an error reply as its exception (not raised).

        A call that found the script missing (nothing of it ran) is sent again once the
        script is loaded. If ``calls`` raises, the replies of the calls already sent are
        read first (they may have run), then its error goes on.
        """
        connection, release = self._checkout()
        try:
            return self._pipeline(connection, iter(calls))
        finally:
            release()

    def _pipeline(
        self, connection: Connection, calls: Iterator[tuple[Sequence[str], Sequence[Arg]]]
    ) -> list[Any]:
        sent: list[bytes] = []

        def replies() -> list[Any]:
            return [self._reply(connection) for _ in sent]

        while True:
            try:
                keys, args = next(calls)
            except StopIteration:
                break
            except BaseException:
                self._guarded(connection, replies)  # the connection stays in step
                raise
            command = pack_command(b"EVALSHA", self._sha, len(keys), *keys, *args)
            self._guarded(connection, functools.partial(self._post, connection, command))
            sent.append(command)
        got = self._guarded(connection, replies)
        for n, reply in enumerate(got):
            if isinstance(reply, NoScriptError):
                got[n] = self._guarded(
                    connection, functools.partial(self._reply, connection, sent[n])
                )
        return got

    @staticmethod
    def _post(connection: Connection, command: bytes) -> None:
        connection.send_packed_command([command], check_health=False)

    def _checkout(self) -> tuple[Connection, Callable[[], None]]:
        """The kept connection if no other caller has it, else one of the pool's; and how
        to give it back."""
        if self._lock.acquire(blocking=False):
            try:
                return self._kept_connection(), self._lock.release
            except BaseException:
                self._lock.release()
                raise
        connection = self._pool.get_connection()
        return connection, lambda: self._pool.release(connection)

    def close(self) -> None:
        """Hand the kept connection back to the pool (closing the pool closes it)."""
        with self._lock:
            kept, self._kept = self._kept, None
            if kept is not None and self._pid == os.getpid():
                self._pool.release(kept)

    def _kept_connection(self) -> Connection:
        if self._pid != os.getpid():  # forked: the parent's socket is not ours to use
            self._kept, self._pid = None, os.getpid()
        kept = self._kept
        if kept is None:
            kept = self._kept = self._pool.get_connection()
            return kept
        # As the pool checks a connection it hands out: one closed by the server (idle
        # timeout, restart) reads as ready or fails the read, and is made again.
        kept.connect()
        try:
            stale = kept.can_read()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            stale = True
        if stale:
            kept.disconnect()
            kept.connect()
        return kept

    def _reply_to(self, connection: Connection, command: bytes) -> Any:
        try:
            return self._send(connection, command)
        except NoScriptError:  # nothing ran: load the script and send it again
            self._send(connection, pack_command(b"SCRIPT", b"LOAD", self._source))
            return self._send(connection, command)

    @staticmethod
    def _guarded(connection: Connection, step: Callable[[], _T]) -> _T:
        """``step()``, a step of talking to Redis on ``connection``: one that failed
        half-way leaves the connection out of step with its replies, and closed."""
        try:
            return step()
        except redis.ResponseError:
            raise  # a whole reply was read: the connection is fine
        except OSError as exc:  # a socket error redis-py let through
            connection.disconnect()
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc
        except BaseException:  # a reply half read (or interrupted) leaves it unusable
            connection.disconnect()
            raise

    def _reply(self, connection: Connection, command: bytes | None = None) -> Any:
        """The next reply (of ``command``, sent alone first, the script loaded, if given);
        an error reply as its exception."""
        try:
            if command is None:
                return connection.read_response()
            return self._reply_to(connection, command)
        except redis.ResponseError as exc:
            return exc

    @classmethod
    def _send(cls, connection: Connection, command: bytes) -> Any:
        cls._post(connection, command)
        return connection.read_response()
