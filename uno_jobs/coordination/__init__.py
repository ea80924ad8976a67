"""Coordination of a cluster of workers over Redis: membership, leader, commands.

See ``_coordinator.py`` for the tick every coordinator runs and the bounds it guarantees,
``_members.py`` for the options, the listing's rows and the recovery protocol, and
``_scripts.py`` for the keys and the Lua scripts that change them.
"""

from uno_jobs.coordination._coordinator import WorkerCoordinator
from uno_jobs.coordination._members import ACTIONS, ClusterMember, CoordinatorOptions, Recovery

__all__ = ["ACTIONS", "ClusterMember", "CoordinatorOptions", "Recovery", "WorkerCoordinator"]
