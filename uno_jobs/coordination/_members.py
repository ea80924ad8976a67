"""What a cluster's members are made of: options, the listing's rows, recovery."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ACTIONS", "MAX_HELD_REPORTED", "ClusterMember", "CoordinatorOptions", "Recovery"]

#: The cluster-wide commands.
ACTIONS = ("pause", "resume", "shutdown")
#: The most held-message keys a heartbeat reports (a worker's window is far smaller).
MAX_HELD_REPORTED = 1000


class Recovery(Protocol):
    """How the jobs a dead worker held are made deliverable at once (Redis, embedded).

    A worker registered with one reports ``held()`` at every heartbeat. When a coordinator
    sweeps a dead member whose ``broker`` equals one of its own workers', it hands the
    dead member's last report to that worker's ``restore`` (run in a thread).
    """

    @property
    def broker(self) -> str:
        """The broker's URL as displayed (password hidden): equal means the same broker."""
        ...

    def held(self) -> list[str]:
        """What identifies the messages the worker holds unacknowledged: on Redis and the
        embedded broker its channel's owner key, which also covers messages fetched
        after this report."""
        ...

    def restore(self, keys: Sequence[str]) -> int:
        """Make these messages deliverable now; returns how many were."""
        ...


class CoordinatorOptions(BaseModel):
    """How often a coordinator beats, and how long silence lasts before death is declared."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    cluster_id: str = Field("default", min_length=1, max_length=200, pattern=r"^[^\s*:]+$")
    heartbeat_interval: float = Field(5.0, gt=0, le=3600)
    #: A worker silent for this many intervals is dead (its ``alive`` key's TTL).
    missed_heartbeats: int = Field(3, ge=2, le=100)
    #: Leader lease in seconds (default: the heartbeat TTL).
    leader_lease: float | None = Field(None, gt=0, le=3600)


@dataclass(frozen=True)
class ClusterMember:
    """One worker as the cluster sees it (``WorkerCoordinator.members``)."""

    worker_id: str
    state: str
    type: str
    queue: str
    host: str
    pid: int
    current_jobs: int
    in_flight: int
    last_heartbeat: float
    node: str
    leader: bool
    alive: bool

    @classmethod
    def from_json(cls, text: str, leader_node: str | None, alive: bool) -> ClusterMember:
        data = json.loads(text)
        return cls(
            worker_id=str(data["worker_id"]),
            state=str(data["state"]) if alive else "dead",
            type=str(data["type"]),
            queue=str(data["queue"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            current_jobs=int(data["current_jobs"]),
            in_flight=int(data["in_flight"]),
            last_heartbeat=float(data["last_heartbeat"]),
            node=str(data["node"]),
            leader=alive and leader_node is not None and data["node"] == leader_node,
            alive=alive,
        )
