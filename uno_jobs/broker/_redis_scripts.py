"""The Lua scripts of uno_jobs' Redis channel (``_redis.py``; its docstring tells the flow).

Each runs atomically on the server and keeps kombu's keys and formats: the unacked hash
(``tag -> [message, exchange, routing_key]``), the unacked index (``tag -> score``) and the
lists; the owner sets (``<unacked_key>_owner:<owner>``) are uno_jobs' own.
"""

from __future__ import annotations

__all__ = ["FETCH_SCRIPT", "HAND_BACK_SCRIPT", "RESTORE_OWNER_SCRIPT"]

# KEYS: unacked hash, unacked index, the channel's owner set, then the lists in the order
# to take from, then (optional) a job store's cancellations version key.
# ARGV: the most items to take, the index score, the owner set's TTL in milliseconds, then
# the queue of each list (the routing key recorded for an item whose envelope has none).
# Returns {position, tag, item, ...}: the 1-based position of the item's list, negated
# (and the tag empty) for an item that is not an envelope with a delivery tag: popped, not
# recorded. With a version key and any item taken, the key's value ('0' if unset) follows,
# read in the same atomic step as the pops.
FETCH_SCRIPT = """
local limit = tonumber(ARGV[1])
local taken = {}
local count = 0
for k = 4, #ARGV do
  if count >= limit then break end
  local items = redis.call('RPOP', KEYS[k], limit - count)
  if items then
    for _, item in ipairs(items) do
      count = count + 1
      local ok, envelope = pcall(cjson.decode, item)
      local props = ok and type(envelope) == 'table' and envelope['properties']
      local tag = type(props) == 'table' and props['delivery_tag']
      if type(tag) == 'string' and tag ~= '' then
        local info = props['delivery_info']
        local exchange, routing_key = '', ARGV[k]
        if type(info) == 'table' then
          if type(info['exchange']) == 'string' then exchange = info['exchange'] end
          if type(info['routing_key']) == 'string' then routing_key = info['routing_key'] end
        end
        redis.call('HSET', KEYS[1], tag, '[' .. item .. ', ' .. cjson.encode(exchange)
          .. ', ' .. cjson.encode(routing_key) .. ']')
        redis.call('ZADD', KEYS[2], ARGV[2], tag)
        redis.call('SADD', KEYS[3], tag)
        taken[#taken + 1] = k - 3
        taken[#taken + 1] = tag
      else
        taken[#taken + 1] = 3 - k
        taken[#taken + 1] = ''
      end
      taken[#taken + 1] = item
    end
  end
end
if #taken > 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  if #KEYS > #ARGV then taken[#taken + 1] = redis.call('GET', KEYS[#ARGV + 1]) or '0' end
end
return taken
"""

# KEYS: unacked hash, unacked index, the channel's owner set, then the list of each item.
# ARGV: tag, item pairs, in the order they were fetched. Items already settled or restored
# (their unacked entry is gone) stay where they are.
HAND_BACK_SCRIPT = """
for i = #KEYS - 3, 1, -1 do
  local tag = ARGV[2 * i - 1]
  redis.call('SREM', KEYS[3], tag)
  if redis.call('HDEL', KEYS[1], tag) == 1 then
    redis.call('ZREM', KEYS[2], tag)
    redis.call('RPUSH', KEYS[i + 3], ARGV[2 * i])
  end
end
return 0
"""

# KEYS: unacked hash, unacked index, an owner set, then the list of each push.
# ARGV: tag, message pairs, one per push (a message routed to several queues has several),
# then the owner set's members to remove. A message is restored only if its unacked entry
# is still there, and only once: whoever removes the entry (an ack, kombu's sweep, another
# restore) settles it.
RESTORE_OWNER_SCRIPT = """
local pushes = #KEYS - 3
local mine = {}
local restored = 0
for i = 1, pushes do
  local tag = ARGV[2 * i - 1]
  if mine[tag] == nil then
    mine[tag] = redis.call('HDEL', KEYS[1], tag) == 1
    if mine[tag] then
      redis.call('ZREM', KEYS[2], tag)
      restored = restored + 1
    end
  end
  if mine[tag] then redis.call('RPUSH', KEYS[i + 3], ARGV[2 * i]) end
end
for j = 2 * pushes + 1, #ARGV do redis.call('SREM', KEYS[3], ARGV[j]) end
return restored
"""
