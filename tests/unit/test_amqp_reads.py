"""``_BufferedReader``: py-amqp frames served from chunks, over a real socket pair."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from amqp.transport import TCPTransport

from uno_jobs.broker._amqp import _BufferedReader


@pytest.fixture
def pair() -> Iterator[tuple[TCPTransport, socket.socket]]:
    ours, broker = socket.socketpair()
    transport = TCPTransport.__new__(TCPTransport)
    transport.sock = ours
    transport._read_buffer = b""
    transport.raise_on_initial_eintr = True
    transport._read = _BufferedReader(transport)
    yield transport, broker
    ours.close()
    broker.close()


def frame(payload: bytes, channel: int = 1, kind: int = 3) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def test_many_frames_in_one_chunk_come_out_whole_and_in_order(
    pair: tuple[TCPTransport, socket.socket],
) -> None:
    transport, broker = pair
    payloads = [bytes([i % 251]) * (i * 37 % 3000 + 1) for i in range(200)]
    data = b"".join(frame(p, channel=i % 7 + 1) for i, p in enumerate(payloads))
    sender = threading.Thread(target=broker.sendall, args=(data,))  # more than a socket buffer
    sender.start()
    transport.sock.settimeout(5)
    for i, payload in enumerate(payloads):
        kind, channel, body = transport.read_frame()
        assert (kind, channel, bytes(body)) == (3, i % 7 + 1, payload)
    sender.join()


def test_a_frame_split_across_chunks_is_joined(pair: tuple[TCPTransport, socket.socket]) -> None:
    transport, broker = pair
    data = frame(b"x" * 100_000) + frame(b"tail")
    broker.sendall(data[:10])
    broker.settimeout(5)
    transport.sock.settimeout(5)
    sender = threading.Thread(target=broker.sendall, args=(data[10:],))
    sender.start()
    assert bytes(transport.read_frame()[2]) == b"x" * 100_000
    assert bytes(transport.read_frame()[2]) == b"tail"
    sender.join()


def test_a_timeout_mid_frame_loses_nothing(pair: tuple[TCPTransport, socket.socket]) -> None:
    transport, broker = pair
    whole = frame(b"first") + frame(b"second")
    broker.sendall(whole[:15])  # all of the first frame and part of the second
    transport.sock.settimeout(0.05)
    assert bytes(transport.read_frame()[2]) == b"first"
    with pytest.raises(socket.timeout):
        transport.read_frame()
    broker.sendall(whole[15:])
    assert bytes(transport.read_frame()[2]) == b"second"
