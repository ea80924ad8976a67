"""Health status and the HTTP probes of a real worker (no broker round trip to answer)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import contract_tasks  # noqa: F401 - registers the contract.* tasks
import pytest
from conftest import AMQP_URL, async_wait_until, opened, run, running
from tcp_proxy import TcpProxy

from uno_jobs.worker import AsyncWorker

pytestmark = pytest.mark.integration


def probe(address: tuple[str, int] | None, path: str) -> tuple[int, dict[str, Any]]:
    assert address is not None, "the probes are off"
    host, port = address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_probes_follow_the_worker_lifecycle(uno_home: Path, queue_name: str) -> None:
    async def main() -> None:
        async with opened(queue_name, "embedded://") as queue:
            worker = AsyncWorker(queue_name=queue.name, broker_url="embedded://", probe_port=0)
            assert worker.probe_address is None
            async with running(worker):
                address = worker.probe_address
                assert address is not None and address[0] == "127.0.0.1"
                assert probe(address, "/livez")[0] == 200
                code, body = probe(address, "/readyz")
                assert (code, body["health"], body["reasons"]) == (200, "healthy", [])
                assert await (await queue.enqueue("contract.add", [1, 2])).wait(timeout=15) == 3

                await worker.pause()
                code, body = probe(address, "/readyz")
                assert code == 503 and body["health"] == "degraded"
                assert "not taking jobs: worker is paused" in body["reasons"]
                assert (await worker.get_health())["status"] == "degraded"
                assert worker.health_reasons() == ["worker is paused"]
                assert probe(address, "/livez")[0] == 200

                await worker.resume()
                assert probe(address, "/readyz")[0] == 200
            with pytest.raises(OSError):
                probe(address, "/livez")

    run(main)


def test_readiness_turns_false_when_the_consumer_disconnects(queue_name: str) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    proxied = AMQP_URL.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")

    async def main() -> None:
        async with opened(queue_name, AMQP_URL) as queue:
            worker = AsyncWorker(
                queue_name=queue.name,
                broker_url=proxied,
                store_url=queue.store_url,
                probe_port=0,
            )
            async with running(worker):
                assert probe(worker.probe_address, "/readyz")[0] == 200
                proxy.close()  # connections reset, and no new ones accepted

                def disconnected() -> bool:
                    code, body = probe(worker.probe_address, "/readyz")
                    return code == 503 and body["health"] == "unhealthy"

                await async_wait_until(disconnected, timeout=20)
                _, body = probe(worker.probe_address, "/readyz")
                assert body["reasons"] == ["consumer disconnected from the broker"]
                assert (await worker.get_health())["status"] == "unhealthy"
                assert probe(worker.probe_address, "/livez")[0] == 200  # alive, not ready

    try:
        run(main)
    finally:
        proxy.close()
