"""RabbitMQ: a worker's consumer connection reads its frames with ``FrameReader`` (a
job's message arrives through it), and a job published through the session's own frames
runs with the arguments it was enqueued with."""

from __future__ import annotations

from pathlib import Path

import contract_tasks  # noqa: F401 (registers contract.mark)
import pytest
from conftest import AMQP_URL, async_wait_until, opened, run, running

from uno_jobs import AsyncWorker
from uno_jobs.broker._amqp_frames import FrameReader

pytestmark = pytest.mark.integration


def test_a_workers_rabbitmq_consumer_reads_frames_with_frame_reader(
    uno_home: Path, queue_name: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    async def main() -> None:
        async with opened(queue_name, AMQP_URL) as queue:
            worker = AsyncWorker(queue_name=queue_name, broker_url=AMQP_URL, poll_interval=0.1)
            async with running(worker):
                handle = await queue.enqueue("contract.mark", [str(marks), "ünï ☃"])
                await async_wait_until(
                    lambda: queue.get_job_sync(handle.id).status.value == "succeeded",
                    timeout=20,
                )
                consumer = worker._consumer
                assert consumer is not None and consumer._conn is not None
                reader = consumer._conn.connection.on_inbound_frame
                assert isinstance(reader, FrameReader)
        assert [p.name.split(".")[0] for p in marks.iterdir()] == ["ünï ☃"]

    run(main)
