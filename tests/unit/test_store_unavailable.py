"""A Redis job store that cannot be reached is named in the error, never with its password.

No server is needed: the store points at a port nothing listens on.
"""

from __future__ import annotations

import socket
import time

import pytest

from uno_jobs import StoreUnavailableError
from uno_jobs.cli import main
from uno_jobs.store import JobRecord, JobStatus, open_store


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_call_names_the_store_with_its_password_masked() -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{_closed_port()}/3"
    store = open_store(url)
    record = JobRecord(
        id="j", task="t", queue="q", status=JobStatus.QUEUED, enqueued_at=time.time()
    )
    calls = [
        lambda: store.create(record),
        lambda: store.get("j"),
        lambda: store.cancellations(None),
        lambda: store.dead_letters("q"),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailableError) as caught:
            call()
        text = str(caught.value)
        assert text.startswith(f"job store redis://:***@127.0.0.1:{url.split(':')[3]}")
        assert "hunter2" not in text and "hunter2" not in caught.value.store
        assert isinstance(caught.value, ConnectionError)
    store.close()


def test_the_cli_exits_4_when_the_store_is_down(capsys: pytest.CaptureFixture[str]) -> None:
    store = f"redis://:hunter2-secret@127.0.0.1:{_closed_port()}/3"
    code = main(["enqueue", "demo.noop", "--broker", "memory://", "--store", store])
    err = capsys.readouterr().err
    assert code == 4
    assert "job store redis://:***@127.0.0.1" in err and "is unavailable" in err
    assert "hunter2" not in err and "Traceback" not in err
