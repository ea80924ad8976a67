"""``DistributedWorker``: an ``AsyncWorker`` that is a member of a cluster.

It registers with a ``WorkerCoordinator`` before it consumes (so an id alive in the
cluster is refused before any job is taken), obeys the cluster's commands, and at shutdown
hands leadership over before it drains, then leaves the membership.

Delayed jobs: the leader polls for due ones at the worker's own pace; the others poll
``FOLLOWER_POLL_FACTOR`` times less often. They still poll, so that due jobs move when
there is no leader (claims are atomic: DESIGN.md §2); the leader only saves polling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from uno_jobs.config import redact_url, resolve_coordinator_url
from uno_jobs.worker._options import AsyncWorkerOptions, WorkerOptions
from uno_jobs.worker._types import AsyncWorker

if TYPE_CHECKING:
    from uno_jobs.coordination import WorkerCoordinator

__all__ = ["FOLLOWER_POLL_FACTOR", "DistributedWorker", "DistributedWorkerOptions"]

FOLLOWER_POLL_FACTOR = 10


class DistributedWorkerOptions(AsyncWorkerOptions):
    """``AsyncWorker``'s options plus the cluster's."""

    cluster_id: str = Field("default", min_length=1, max_length=200, pattern=r"^[^\s*:]+$")
    #: Redis URL of the coordinator (default: ``UNO_JOBS_COORDINATOR_URL``, a Redis broker).
    coordinator_url: str | None = None
    #: Seconds between cluster heartbeats (``heartbeat_interval`` is the broker's).
    cluster_heartbeat_interval: float = Field(5.0, gt=0, le=3600)
    #: A member silent for this many cluster heartbeats is dead.
    missed_heartbeats: int = Field(3, ge=2, le=100)


class DistributedWorker(AsyncWorker):
    """Works as part of a cluster of workers across machines (WORKERS.md).

    Attributes:
        coordinator: Its ``WorkerCoordinator`` (membership, leadership, commands).
    """

    options_model: ClassVar[type[WorkerOptions]] = DistributedWorkerOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts: DistributedWorkerOptions = self.options  # type: ignore[assignment]
        self.cluster_id = opts.cluster_id
        self._broker_display = redact_url(self.broker_url)
        self.coordinator_url = resolve_coordinator_url(opts.coordinator_url, self.broker_url)
        # Imported here: redis-py (with its own telemetry) costs ~18 MB of memory and
        # 0.2 s of start-up, paid only by the workers that coordinate.
        from uno_jobs.coordination import WorkerCoordinator

        self.coordinator: WorkerCoordinator = WorkerCoordinator(
            self.coordinator_url,
            opts.cluster_id,
            heartbeat_interval=opts.cluster_heartbeat_interval,
            missed_heartbeats=opts.missed_heartbeats,
        )

    async def start(self) -> None:
        """Register in the cluster, start consuming, then start the coordinator.

        Raises:
            WorkerIdInUseError: a live worker of the cluster holds this ``worker_id``.
            CoordinationError: the coordinator's Redis cannot be reached.
            BrokerUnavailableError: the broker cannot be reached.
        """
        try:
            await self.coordinator.register_worker(self, recovery=_BrokerRecovery(self))
        except BaseException:
            await self.coordinator.stop()
            raise
        self.coordinator.add_leadership_listener(self._leading)
        try:
            await super().start()
            self._leading(self.coordinator.is_leader)
            await self.coordinator.start()
        except BaseException:
            await super().shutdown(wait=False)
            await self.coordinator.stop()
            raise

    def _leading(self, leader: bool) -> None:
        """The leader polls for due delayed jobs at full pace, the others seldom."""
        mover = self._mover
        if mover is None:
            return
        pace = min(self.options.poll_interval, 1.0)
        mover.set_interval(pace if leader else pace * FOLLOWER_POLL_FACTOR)

    async def shutdown(self, wait: bool = True) -> None:
        """Hand leadership over, stop (see ``BaseWorker.shutdown``), leave the cluster."""
        await self.coordinator.release_leadership()
        await super().shutdown(wait)
        await self.coordinator.stop()


class _BrokerRecovery:
    """A ``Recovery`` through the worker's own broker and consumer (Redis brokers)."""

    def __init__(self, worker: DistributedWorker) -> None:
        self._worker = worker
        self.broker = worker._broker_display

    def held(self) -> list[str]:
        consumer = self._worker._consumer
        return consumer.held_keys() if consumer is not None else []

    def restore(self, keys: Sequence[str]) -> int:
        broker = self._worker._broker
        return broker.restore_unacked(keys) if broker is not None else 0
