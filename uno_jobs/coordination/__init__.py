"""Coordination of a cluster of workers over Redis: membership, leader, commands.

See ``_coordinator.py`` for the tick every coordinator runs and the bounds it guarantees,
and ``_scripts.py`` for the keys and the Lua scripts that change them.
"""

from uno_jobs.coordination._coordinator import (
    ACTIONS,
    ClusterMember,
    CoordinatorOptions,
    WorkerCoordinator,
)

__all__ = ["ACTIONS", "ClusterMember", "CoordinatorOptions", "WorkerCoordinator"]
