"""The cluster's keys in Redis and the Lua scripts that change them atomically.

Keys of cluster ``C`` (prefix ``{key_prefix}cluster:C:``)::

    alive:{worker_id}   string, TTL = heartbeat TTL   the registration token of the live
                                                      worker holding that id (the heartbeat)
    members             hash worker_id -> JSON        what each worker last reported
    leader              string, TTL = leader lease    "{fencing token}:{node}"
    leader_epoch        integer                       INCR'd at each election: the tokens
    command_seq         integer                       INCR'd at each command
    desired             hash target -> "{seq}:{action}"  target: a worker id, or "*" (all)
    wake                pub/sub channel               "command" / "leader": wake up, reconcile
"""

from __future__ import annotations

__all__ = [
    "ALL",
    "CLAIM_ID",
    "COMMAND",
    "HEARTBEAT",
    "LEADER_ACQUIRE",
    "LEADER_RELEASE",
    "LEADER_RENEW",
    "RELEASE_ID",
    "ClusterKeys",
]

#: The ``desired`` field of a command sent to every worker.
ALL = "*"


class ClusterKeys:
    """The names of one cluster's keys."""

    def __init__(self, key_prefix: str, cluster_id: str) -> None:
        self.prefix = f"{key_prefix}cluster:{cluster_id}:"
        self.members = self.prefix + "members"
        self.leader = self.prefix + "leader"
        self.leader_epoch = self.prefix + "leader_epoch"
        self.command_seq = self.prefix + "command_seq"
        self.desired = self.prefix + "desired"
        self.wake = self.prefix + "wake"

    def alive(self, worker_id: str) -> str:
        return f"{self.prefix}alive:{worker_id}"


# KEYS: alive, members, command_seq. ARGV: token, ttl_ms, worker_id, info JSON.
# Returns {1, command seq at registration, the member entry this claim replaces} or {0, the
# holder's token}. The replaced entry ('' if none) is a dead process's that nobody swept
# yet (its alive key had expired): its held jobs are the new claimant's to recover.
CLAIM_ID = """
local previous = ''
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not ok then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= ARGV[1] then return {0, holder} end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  previous = redis.call('HGET', KEYS[2], ARGV[3]) or ''
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return {1, tonumber(redis.call('GET', KEYS[3]) or '0'), previous}
"""

# KEYS: alive, members. ARGV: token, ttl_ms, worker_id, info JSON.
# Compare-and-extend: 1 extended (or re-taken after it expired), 0 another process holds it.
HEARTBEAT = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif holder ~= ARGV[1] then
  return 0
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
"""

# KEYS: alive, members. ARGV: token, worker_id. Compare-and-delete.
RELEASE_ID = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# KEYS: leader, leader_epoch. ARGV: node, lease_ms. Returns the new fencing token, or 0.
LEADER_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
"""

# KEYS: leader. ARGV: "{token}:{node}", lease_ms. Compare-and-extend: 1 renewed, 0 lost.
LEADER_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: leader, wake. ARGV: "{token}:{node}". Compare-and-delete, then wake the others.
LEADER_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], 'leader')
  return 1
end
return 0
"""

# KEYS: command_seq, desired, wake. ARGV: target, action. Returns the command's seq.
COMMAND = """
local seq = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], seq .. ':' .. ARGV[2])
redis.call('PUBLISH', KEYS[3], 'command')
return seq
"""
