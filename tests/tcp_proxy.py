"""A TCP proxy a test owns, so it can cut connections to a shared broker without touching it."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut()`` drops every live connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._refusing = False
        self.accepted = 0
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._refusing:  # went down while this one was connecting
                    _reset(client)
                    _reset(upstream)
                    continue
                self._sockets += [client, upstream]
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                # A paused proxy holds the bytes: the peer sees a broker that went silent.
                while not self._flowing.wait(0.05):
                    if self._closed:
                        return
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def pause(self) -> None:
        """Stop forwarding (connections stay open): a broker that stopped answering."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Reset every connection made so far (new ones are still accepted)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _reset(sock)

    def down(self) -> None:
        """Reset every connection and refuse new ones until ``up()``: the broker is gone."""
        with self._lock:
            self._refusing = True
        self.cut()

    def up(self) -> None:
        """Accept and forward connections again after ``down()``."""
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._server.close()
        self.cut()


def _reset(sock: socket.socket) -> None:
    """Close with linger 0, so the peer gets a reset, as from a dropped network path."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
