"""What only SQS needs: message size after kombu's double encoding, URL options.

The behaviours shared by every broker run on SQS through the ``broker_url`` fixture
(moto's SQS server, ``conftest.sqs_endpoint``); these are the SQS-only ones.
"""

from __future__ import annotations

from pathlib import Path

import contract_tasks  # noqa: F401 - registers the contract.* tasks
import pytest
from conftest import make_broker_url, opened, run, running, sqs_endpoint

from uno_jobs.errors import JobNotFoundError, PayloadError
from uno_jobs.worker import AsyncWorker

pytestmark = pytest.mark.integration


def test_message_too_large_once_encoded_for_sqs_is_refused_and_not_recorded(
    uno_home: Path, queue_name: str
) -> None:
    url, cleanup = make_broker_url("sqs")
    # A queue made beforehand with the classic 256 KiB limit (SQS's default is now 1 MiB).
    boto3 = pytest.importorskip("boto3")
    client = boto3.client(
        "sqs",
        endpoint_url=f"http://{sqs_endpoint()}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_queue(QueueName=queue_name, Attributes={"MaximumMessageSize": "262144"})

    async def main() -> None:
        async with opened(queue_name, url) as queue:
            # 180 KB of arguments: under uno_jobs' 256 KiB body limit, but kombu's two
            # base64 layers make it about 320 KB, over the queue's 256 KiB.
            with pytest.raises(PayloadError, match=r"once encoded for SQS.*262144") as info:
                await queue.enqueue("contract.add", ["x" * 180_000, ""], job_id=f"{queue_name}-big")
            assert f"{queue_name}-big" in str(info.value)
            with pytest.raises(JobNotFoundError):
                await queue.get_job(f"{queue_name}-big")
            # 100 KB (about 180 KB on the wire) goes through and runs.
            async with running(AsyncWorker(queue_name=queue_name, broker_url=url)):
                job = await queue.enqueue("contract.add", ["y" * 100_000, "z"])
                assert await job.wait(timeout=20) == "y" * 100_000 + "z"

    try:
        run(main)
    finally:
        cleanup()
