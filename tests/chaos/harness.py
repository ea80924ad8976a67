"""What every chaos case uses: worker processes, the ledger, an own redis-server, the verdict.

A worker is the real command line (``uno-jobs worker``) in a session of its own, so a
SIGKILL of its process group takes its children with it, and a SIGTERM reaches it the way
a process manager sends one. The job ids ``enqueue`` returned are kept by the test; the
starts are in the ledger the tasks write (``chaos_tasks``). At the end every id must be
terminal in the store (succeeded, or dead-lettered) and started once, or a bounded number
of times where a kill made the broker deliver it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import chaos_tasks
import pytest
import redis
from conftest import wait_until

from uno_jobs import JobSpec, JobStatus, Queue
from uno_jobs.errors import JobNotFoundError

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: Jobs per case: the reduced default runs in CI; the full size is documented in
#: docs/chaos.md (``UNO_JOBS_CHAOS_JOBS=5000``).
JOBS = int(os.environ.get("UNO_JOBS_CHAOS_JOBS", "300"))
#: Seconds a wait for the run may take: scaled with its size (the sync worker is the slowest).
RUN_SECONDS = 60.0 + JOBS * 0.05
#: Milliseconds each job takes: long enough that a kill lands in the middle of some.
JOB_MS = 10.0
#: ``--concurrency`` per worker type (the sync worker runs one job at a time).
CONCURRENCY = {"sync": 1, "thread": 4, "process": 2, "async": 10}
#: The worker's default ``batch_size``: prefetched messages on top of the running ones.
BATCH_SIZE = 10
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.DEAD}
_CLI = "import sys; from uno_jobs.cli import main; sys.exit(main())"


def window(worker_type: str) -> int:
    """Messages a worker holds at most (running + prefetched): what one kill can redeliver."""
    return CONCURRENCY[worker_type] + BATCH_SIZE


def task_for(worker_type: str) -> str:
    return "chaos.work_async" if worker_type == "async" else "chaos.work"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Ledger:
    """The file the tasks append ``start <job id> <worker label>`` lines to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def lines(self) -> list[tuple[str, str]]:
        out = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "start":
                out.append((parts[1], parts[2]))
        return out

    def starts(self) -> Counter[str]:
        return Counter(job_id for job_id, _ in self.lines())

    def count(self) -> int:
        """Starts so far (polled every 10 ms: counts lines without parsing them)."""
        return self.path.read_bytes().count(b"\n")


class WorkerProcess:
    """``uno-jobs worker`` in its own session, logging to ``<label>.log``."""

    def __init__(
        self, label: str, worker_type: str, queue: str, env: dict[str, str], logs: Path
    ) -> None:
        self.label = label
        self.worker_type = worker_type
        self.log_path = logs / f"{label}.log"
        argv = [
            sys.executable,
            "-c",
            _CLI,
            "worker",
            "--app",
            "chaos_tasks",
            "--type",
            worker_type,
            "--queue",
            queue,
            "--concurrency",
            str(CONCURRENCY[worker_type]),
            "--worker-id",
            label,
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                env={**env, chaos_tasks.LABEL_ENV: label},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_consuming(self, timeout: float = 60.0) -> None:
        def consuming() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.label} exited early:\n{self.log()}")
            return " consuming " in self.log()

        wait_until(consuming, timeout=timeout, interval=0.05)

    def sigkill(self) -> None:
        """SIGKILL the worker and its children (its process group), and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def sigterm(self) -> None:
        """SIGTERM the worker process only, as a process manager would."""
        self.proc.send_signal(signal.SIGTERM)

    def finish(self) -> None:
        """Clean-up: whatever still runs of the group is killed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


@dataclass
class Chaos:
    """One case: its queue, ledger, worker processes and the ids ``enqueue`` returned."""

    queue: Queue
    worker_type: str
    env: dict[str, str]
    logs: Path
    ledger: Ledger
    job_ms: float = JOB_MS
    ids: list[str] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self) -> WorkerProcess:
        label = f"w{len(self.workers) + 1}-{uuid.uuid4().hex[:6]}"
        worker = WorkerProcess(label, self.worker_type, self.queue.name, self.env, self.logs)
        self.workers.append(worker)
        return worker

    def enqueue(self, count: int, batch: int = 50) -> None:
        """Enqueue ``count`` jobs; each id is kept once ``enqueue`` returned it."""
        task = task_for(self.worker_type)
        for start in range(0, count, batch):
            specs = [
                JobSpec(task, [job_id, self.job_ms], job_id=job_id)
                for job_id in (f"c-{uuid.uuid4().hex}" for _ in range(min(batch, count - start)))
            ]
            self.ids.extend(handle.id for handle in self.queue.enqueue_many_sync(specs))

    def wait_started(self, count: int, timeout: float = RUN_SECONDS) -> None:
        try:
            wait_until(lambda: self.ledger.count() >= count, timeout=timeout, interval=0.01)
        except AssertionError:
            tails = "\n".join(f"--- {w.label}\n{w.log()[-4000:]}" for w in self.workers)
            raise AssertionError(
                f"{self.ledger.count()} starts, not {count}, within {timeout} s\n{tails}"
            ) from None

    def statuses(self, timeout: float) -> dict[str, JobStatus | None]:
        """Each id's status once all are terminal, or when ``timeout`` runs out."""
        found: dict[str, JobStatus | None] = dict.fromkeys(self.ids)
        deadline = time.monotonic() + timeout
        while True:
            for job_id, status in found.items():
                if status in TERMINAL:
                    continue
                try:
                    found[job_id] = self.queue.get_job_sync(job_id).status
                except JobNotFoundError:
                    found[job_id] = None
                except (ConnectionError, redis.ConnectionError):
                    # The test's own store connection, cut by the proxy: read again. (The
                    # Redis store does not retry by itself: a write might apply twice.)
                    break
            if all(s in TERMINAL for s in found.values()) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def verdict(self, timeout: float = RUN_SECONDS) -> Verdict:
        """Wait for every job to be terminal, stop the workers gracefully, compare."""
        statuses = self.statuses(timeout)
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.sigterm()
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=40)
        starts = self.ledger.starts()
        lost = sorted(i for i, s in statuses.items() if s not in TERMINAL)
        return Verdict(
            enqueued=len(self.ids),
            lost={i: statuses[i] for i in lost},
            duplicated={i: n for i, n in starts.items() if n > 1},
            never_started=sorted(
                i for i, s in statuses.items() if s == JobStatus.SUCCEEDED and not starts[i]
            ),
            dead=sum(1 for s in statuses.values() if s == JobStatus.DEAD),
            logs={w.label: w.log() for w in self.workers},
        )


@dataclass
class Verdict:
    enqueued: int
    lost: dict[str, JobStatus | None]
    duplicated: dict[str, int]
    never_started: list[str]
    dead: int
    logs: dict[str, str]

    @property
    def extra_starts(self) -> int:
        return sum(n - 1 for n in self.duplicated.values())

    def explain(self) -> str:
        tails = "\n".join(
            f"--- {label} (last 3000 chars)\n{text[-3000:]}" for label, text in self.logs.items()
        )
        lost = dict(list(self.lost.items())[:10])
        return (
            f"enqueued {self.enqueued}, lost {len(self.lost)} (e.g. {lost}), "
            f"extra starts {self.extra_starts}, dead {self.dead}, "
            f"succeeded without a start {len(self.never_started)}\n{tails}"
        )


@contextlib.contextmanager
def chaos_case(
    queue_name: str,
    broker_url: str,
    worker_type: str,
    tmp_path: Path,
    producer_url: str | None = None,
    job_ms: float = JOB_MS,
) -> Iterator[Chaos]:
    """A ``Chaos`` whose workers are killed and whose queue is deleted afterwards.

    ``broker_url`` is what the workers use; ``producer_url`` the test's own (default: the
    same). The job store is the broker's default: the broker's Redis, else the SQLite
    store under ``UNO_JOBS_HOME``, shared by the test and its workers.
    """
    ledger = Ledger(tmp_path / "ledger.txt")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), str(HERE), str(ROOT / "tests")) if p),
        "UNO_JOBS_BROKER_URL": broker_url,
        chaos_tasks.LEDGER_ENV: str(ledger.path),
    }
    queue = Queue(queue_name, broker_url=producer_url or broker_url)
    case = Chaos(queue, worker_type, env, tmp_path, ledger, job_ms)
    try:
        yield case
    finally:
        for worker in case.workers:
            worker.finish()
        try:
            asyncio.run(asyncio.wait_for(queue.delete(), 30))
        except Exception as exc:  # the broker of a failed case may be gone
            print(f"chaos clean-up: deleting {queue_name}'s queues failed: {exc}")
        queue.close()


class RedisServer:
    """A redis-server of the test's own, on a free port, its data in ``folder``.

    Every write is in the append-only file before the reply (``appendfsync always``), so
    a SIGKILL and a restart on the same port lose nothing a client was told was written.
    """

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, timeout=20, interval=0.05)

    def _answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
