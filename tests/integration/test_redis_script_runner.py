"""``ScriptRunner``, the Redis store's own ``EVALSHA`` path, against the real Redis.

Every script here has a random comment in its source, so its SHA is new to the server
(the first call meets ``NOSCRIPT``) and nothing is shared with other tests; every key is
under a random prefix in database 3 and deleted at the end.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from uno_jobs.store._redis_script import ScriptRunner, pack_command

pytestmark = pytest.mark.integration

URL = "redis://127.0.0.1:6379/3"

# KEYS[1] a list; ARGV: values pushed to it. Returns the list's length and the values seen.
PUSH = "-- {tag}\nlocal n = redis.call('RPUSH', KEYS[1], unpack(ARGV))\nreturn {{n, ARGV}}"


@pytest.fixture
def client() -> Iterator[redis.Redis[str]]:
    connection: redis.Redis[str] = redis.Redis.from_url(URL, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def key(client: redis.Redis[str]) -> Iterator[str]:
    name = f"uno-test-runner-{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def _source() -> str:
    return PUSH.format(tag=uuid.uuid4().hex)


@pytest.fixture
def runner(client: redis.Redis[str]) -> Iterator[ScriptRunner]:
    """A runner of a script new to the server, on ``client``; closed at the end."""
    made = ScriptRunner(client, _source())
    yield made
    made.close()


def test_pack_command_is_resp_of_bulk_strings() -> None:
    assert pack_command(b"SET", "k", 12, 1.5, "é") == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n1.5\r\n$2\r\n\xc3\xa9\r\n"
    )
    with pytest.raises(TypeError, match="bool"):
        pack_command(True)
    with pytest.raises(TypeError, match="NoneType"):
        pack_command(None)  # type: ignore[arg-type]


def test_loads_an_unknown_script_and_reads_replies_as_the_client_decodes(
    client: redis.Redis[str], key: str, runner: ScriptRunner
) -> None:
    assert client.script_exists(runner._sha.decode()) == [False]
    assert runner([key], ["a", 2, b"c", "é"]) == [4, ["a", "2", "c", "é"]]
    assert client.script_exists(runner._sha.decode()) == [True]
    assert runner([key], ["d"]) == [5, ["d"]]
    assert client.lrange(key, 0, -1) == ["a", "2", "c", "é", "d"]


def test_an_error_reply_raises_and_the_connection_goes_on(
    client: redis.Redis[str], key: str, runner: ScriptRunner
) -> None:
    client.set(key, "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        runner([key], ["a"])
    client.delete(key)
    assert runner([key], ["a"]) == [1, ["a"]]


def test_a_kept_connection_the_server_closed_is_made_again(
    client: redis.Redis[str], key: str, runner: ScriptRunner
) -> None:
    runner([key], ["a"])
    kept = runner._kept
    assert kept is not None
    # The server drops it (as an idle timeout or a restart would).
    name = f"runner-{uuid.uuid4().hex}"
    kept.send_command("CLIENT", "SETNAME", name)
    kept.read_response()
    other: redis.Redis[str] = redis.Redis.from_url(URL, decode_responses=True)
    try:
        ids = [c["id"] for c in other.client_list() if c["name"] == name]
        assert len(ids) == 1
        assert other.client_kill_filter(_id=ids[0]) == 1
    finally:
        other.close()
    assert runner([key], ["b"]) == [2, ["b"]]


def test_callers_in_many_threads_each_get_their_own_reply(
    client: redis.Redis[str], key: str
) -> None:
    runner = ScriptRunner(client, _source())
    replies: dict[int, list[object]] = {}
    errors: list[BaseException] = []

    def call(thread: int) -> None:
        try:
            for i in range(50):
                reply = runner([key], [f"{thread}-{i}"])
                replies.setdefault(thread, []).append(reply[1])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(t,)) for t in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        runner.close()
    assert errors == []
    assert replies == {t: [[f"{t}-{i}"] for i in range(50)] for t in range(8)}
    assert client.llen(key) == 400
    # The kept connection went back to the pool; the busy callers' ones were released.
    pool = client.connection_pool
    assert not pool._in_use_connections  # type: ignore[attr-defined]


def test_a_server_that_is_down_raises_redis_connection_error() -> None:
    with socket_nobody_listens() as port:
        down: redis.Redis[str] = redis.Redis(  # no retries, as the store's client
            port=port, socket_connect_timeout=1, decode_responses=True, retry=Retry(NoBackoff(), 0)
        )
        runner = ScriptRunner(down, _source())
        try:
            with pytest.raises(redis.ConnectionError):
                runner(["k"], ["a"])
            with pytest.raises(redis.ConnectionError):  # and again: nothing left half done
                runner(["k"], ["a"])
        finally:
            runner.close()
            down.close()


class socket_nobody_listens:
    """A local port that refuses connections: bound, never listening."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_a_forked_child_uses_its_own_connection_and_the_parents_goes_on(
    client: redis.Redis[str], key: str, runner: ScriptRunner
) -> None:
    """An application that forks after enqueueing (a pre-forking web server): the child
    must not write on the parent's socket, or the two would read each other's replies."""
    import os

    assert runner([key], ["parent-1"])[0] == 1
    parent_socket = runner._kept._sock  # type: ignore[union-attr]
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        try:
            ok = runner([key], ["child"])[0] == 2
            ok = ok and runner._kept._sock is not parent_socket  # type: ignore[union-attr]
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert runner([key], ["parent-2"]) == [3, ["parent-2"]]
    assert runner._kept._sock is parent_socket  # type: ignore[union-attr]
    assert client.lrange(key, 0, -1) == ["parent-1", "child", "parent-2"]


def test_a_pipeline_returns_each_calls_reply_in_order_an_error_as_its_exception(
    client: redis.Redis[str], key: str, runner: ScriptRunner
) -> None:
    other = f"{key}-other"
    client.set(other, "not a list")
    try:
        # The script is new to the server: every call meets NOSCRIPT (none ran) and is
        # sent again, in order, once it is loaded.
        replies = runner.pipeline([([key], ["a"]), ([other], ["x"]), ([key], ["b", "c"])])
        assert replies[0] == [1, ["a"]] and replies[2] == [3, ["b", "c"]]
        assert isinstance(replies[1], redis.ResponseError) and "WRONGTYPE" in str(replies[1])
        # Loaded now: one round of sends, then the replies.
        assert runner.pipeline([([key], ["d"]), ([key], ["e"])]) == [[4, ["d"]], [5, ["e"]]]
        assert client.lrange(key, 0, -1) == ["a", "b", "c", "d", "e"]
        assert runner.pipeline([]) == []
    finally:
        client.delete(other)


def test_a_pipeline_whose_calls_fail_midway_reads_the_replies_already_due(
    client: redis.Redis[str], key: str, runner: ScriptRunner
) -> None:
    runner([key], ["loaded"])

    def calls() -> Iterator[tuple[list[str], list[str]]]:
        yield [key], ["a"]
        yield [key], ["b"]
        raise RuntimeError("the caller's own failure")

    with pytest.raises(RuntimeError, match="own failure"):
        runner.pipeline(calls())
    assert client.lrange(key, 0, -1) == ["loaded", "a", "b"]
    kept = runner._kept
    assert runner([key], ["c"]) == [4, ["c"]]  # the kept connection is still in step
    assert runner._kept is kept
