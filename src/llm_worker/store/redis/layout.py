"""Where a Redis job store keeps what it keeps, and the scripts that change it.

Key layout (``P`` is ``REDIS_PREFIX``; ``{...}`` are Redis Cluster hash tags,
so each Lua script touches one slot):

``P:{queue}:jobs``      stream, one entry per queued job; consumer group ``workers``
``P:{queue}:pending``   sorted set of waiting job ids by ticket: positions
``P:{queue}:tickets``   counter: the order of submission
``P:{queue}:counts``    hash: bytes of waiting requests; per tenant ``q:T`` its waiting
                        jobs; per waiting job ``of:ID`` its tenant and size
``P:{queue}:running:T`` sorted set: tenant T's running jobs (with a limit), by the
                        end of the lease their worker keeps renewing
``P:{queue}:recent``    sorted set of job ids by created_at: the listing of recent jobs;
                        ids whose job expired are dropped as they are found
``P:{queue}:workers``   sorted set of workers by when each was last heard from (Redis's
                        clock, ms): who is alive; a worker silent for long is dropped
``P:job:{ID}``          hash: state, attempt, seq, start, spec, tenant, size, times,
                        error, owner
``P:events:{ID}``       stream: the job's log, entry ``0-SEQ`` per event
``P:rate:{T}``          the time tenant T's allowance of adds is whole again (GCRA)

Channels: ``P:{events}`` (jobs' logs grew: one message per round of writes,
covering every job the round wrote to, with the events themselves where it has
them; see :func:`encode_notice`), ``P:{queue}:cancel`` (a running job was
cancelled; payload its id), ``P:{queue}:moved`` (a job left the queue),
``P:{queue}:wake`` (a job was queued, or one holding a place among its tenant's
running jobs ended: workers waiting for either look again). On a
Redis Cluster they are sharded channels, each in the slot of its hash tag: the
queue's channels are published by the scripts that change the queue.
"""

from __future__ import annotations

from typing import Any

import orjson

GROUP = "workers"


class Keys:
    """The keys and channels of one store, under its prefix."""

    __slots__ = (
        "cancel_channel",
        "counts_key",
        "events_channel",
        "jobs_key",
        "moved_channel",
        "pending_key",
        "prefix",
        "recent_key",
        "tickets_key",
        "wake_channel",
        "workers_key",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.jobs_key = f"{prefix}:{{queue}}:jobs"
        self.pending_key = f"{prefix}:{{queue}}:pending"
        self.tickets_key = f"{prefix}:{{queue}}:tickets"
        self.counts_key = f"{prefix}:{{queue}}:counts"
        self.recent_key = f"{prefix}:{{queue}}:recent"
        self.workers_key = f"{prefix}:{{queue}}:workers"
        self.events_channel = f"{prefix}:{{events}}"
        self.cancel_channel = f"{prefix}:{{queue}}:cancel"
        self.moved_channel = f"{prefix}:{{queue}}:moved"
        self.wake_channel = f"{prefix}:{{queue}}:wake"

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}"

    def events_key(self, job_id: str) -> str:
        return f"{self.prefix}:events:{{{job_id}}}"

    def running_key(self, tenant: str) -> str:
        return f"{self.prefix}:{{queue}}:running:{tenant}"

    def rate_key(self, tenant: str) -> str:
        return f"{self.prefix}:rate:{{{tenant}}}"


def encode_notice(entries: list[list[Any]]) -> bytes:
    """A message on the events channel: for each job, ``[job_id, last seq]``, and when
    the message carries them, ``attempt`` and the events themselves (``[kind,
    message]`` each, ending at that seq)."""
    return orjson.dumps(entries)


def decoded(value: Any) -> str:
    """A string Redis returned, as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


# KEYS: jobs stream, pending zset, tickets, counts, recent zset. ARGV: job id, queue
# max, tenant, tenant's max queued (-1: none), size, max bytes, created_at, the wake
# channel, the publish command (SPUBLISH on a cluster). Returns the
# job's ticket (the same one when a retry finds it queued already), or -1: the queue
# is full, -3: the tenant's share is, -4: its bytes are. A queued job joins the index
# of recent jobs; a refused one never does.
_SUBMIT = """
local queued = redis.call('ZSCORE', KEYS[2], ARGV[1])
if queued then return tonumber(queued) end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return -1 end
local tenant_max = tonumber(ARGV[4])
if tenant_max >= 0 and tonumber(redis.call('HGET', KEYS[4], 'q:' .. ARGV[3]) or 0) >= tenant_max
then return -3 end
local size = tonumber(ARGV[5])
if tonumber(redis.call('HGET', KEYS[4], 'bytes') or 0) + size > tonumber(ARGV[6]) then
  return -4
end
local ticket = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[1], 'tenant', ARGV[3])
redis.call('ZADD', KEYS[2], ticket, ARGV[1])
redis.call('HINCRBY', KEYS[4], 'q:' .. ARGV[3], 1)
redis.call('HINCRBY', KEYS[4], 'bytes', size)
redis.call('HSET', KEYS[4], 'of:' .. ARGV[1], ARGV[3] .. ' ' .. size)
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
redis.call(ARGV[9], ARGV[8], '')
return ticket
"""

# KEYS: pending zset, counts. ARGV: job id, the queue-moved channel, the publish
# command (SPUBLISH on a cluster: the channel is in the queue's slot). Takes a job out
# of the queue, and out of the counts; returns 1, or 0 if it was not queued.
_DEQUEUE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local of = redis.call('HGET', KEYS[2], 'of:' .. ARGV[1])
if of then
  local tenant, size = string.match(of, '^(.*) (%d+)$')
  redis.call('HDEL', KEYS[2], 'of:' .. ARGV[1])
  if redis.call('HINCRBY', KEYS[2], 'q:' .. tenant, -1) <= 0 then
    redis.call('HDEL', KEYS[2], 'q:' .. tenant)
  end
  redis.call('HINCRBY', KEYS[2], 'bytes', -tonumber(size))
end
redis.call(ARGV[3], ARGV[2], ARGV[1])
return 1
"""

# KEYS: the tenant's running set. ARGV: job id, now (ms), lease (ms), limit. Holds
# one of the tenant's running places for the job; 0 when all are taken. Leases
# whose worker stopped renewing them have run out and count no more.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1])
  or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
  return 1
end
return 0
"""

# KEYS: the tenant's rate key. ARGV: ms between adds, ms of burst. Returns 0 when
# the tenant may add a job now (and it counts), else the ms to wait (GCRA).
_RATE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local interval = tonumber(ARGV[1])
local arrival = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local allowed_from = arrival - tonumber(ARGV[2]) + interval
if now < allowed_from then return allowed_from - now end
redis.call('SET', KEYS[1], arrival + interval, 'PX', arrival + interval - now + 1000)
return 0
"""

# KEYS: job, events. ARGV: owner (worker + entry), takeover (0|1).
# Returns {attempt, '', seq, spec, tenant, created_at} or {0, state that forbids
# starting}. A fresh entry starts a pending job only; one taken over from a dead
# worker, a running one too.
_START = """
local state, attempt, owner = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt', 'owner'))
if not state then return {0, 'missing'} end
if state == 'running' and owner == ARGV[1] then
  local held = redis.call('HMGET', KEYS[1], 'seq', 'spec', 'tenant', 'created_at')
  return {tonumber(attempt), '', unpack(held)}
end
if state ~= 'pending' and not (state == 'running' and ARGV[2] == '1') then
  return {0, state}
end
attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1], 'op', 0)
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
if attempt > 1 then
  seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[2], '0-' .. seq, 'k', 'reset', 'm', '', 'a', attempt)
  redis.call('HSET', KEYS[1], 'start', seq - 1)
end
return {attempt, '', seq, unpack(redis.call('HMGET', KEYS[1], 'spec', 'tenant', 'created_at'))}
"""

# KEYS: job, events. ARGV: attempt, the batch's last op, ttl (ms), now, then each
# event's kind and message. Appends the batch unless the attempt no longer holds the
# job; returns the seq of its last event, or -1. A batch applied already (a retry
# after a reply that got lost) returns the seq it ended at.
_APPEND = """
local state, attempt, op, opseq, seq =
  unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt', 'op', 'opseq', 'seq'))
if attempt ~= ARGV[1] then return -1 end
if tonumber(op) >= tonumber(ARGV[2]) then return tonumber(opseq) end
if state ~= 'running' then return -1 end
seq = tonumber(seq)
for i = 5, #ARGV, 2 do
  seq = seq + 1
  local kind = ARGV[i]
  redis.call('XADD', KEYS[2], '0-' .. seq, 'k', kind, 'm', ARGV[i + 1], 'a', ARGV[1])
  if kind == 'done' or kind == 'failed' then
    redis.call('HSET', KEYS[1], 'state', kind, 'finished_at', ARGV[4])
    if kind == 'failed' then redis.call('HSET', KEYS[1], 'error', ARGV[i + 1]) end
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
end
redis.call('HSET', KEYS[1], 'seq', seq, 'op', ARGV[2], 'opseq', seq)
return seq
"""

# KEYS: job, events. ARGV: ttl (ms), now. Returns the state before.
_CANCEL = """
local state, attempt = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt'))
if not state then return 'missing' end
if state ~= 'pending' and state ~= 'running' then return state end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], '0-' .. seq, 'k', 'cancelled', 'm', '', 'a', attempt)
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return state
"""

# KEYS: job. ARGV: attempt. Returns the job's ticket, or -1 if the attempt lost it.
_RELEASE = """
local state, attempt, ticket = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt', 'ticket'))
if state ~= 'running' or attempt ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'owner', '')
return tonumber(ticket)
"""

# KEYS: jobs stream. ARGV: group, consumer, entry ids. Re-claims (so refreshes)
# the entries this consumer still owns; returns those.
_HEARTBEAT = """
local kept = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
"""

# KEYS: jobs stream. ARGV: group, consumer, entry id. Acknowledges and deletes the
# entry unless another consumer took it over.
_FORGET = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if pending[1] and pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

# KEYS: jobs stream, pending zset, counts. ARGV: job id, ticket, tenant, size.
_REQUEUE = """
if redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[1], '*', 'job', ARGV[1], 'tenant', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'q:' .. ARGV[3], 1)
redis.call('HINCRBY', KEYS[3], 'bytes', tonumber(ARGV[4]))
redis.call('HSET', KEYS[3], 'of:' .. ARGV[1], ARGV[3] .. ' ' .. ARGV[4])
return 1
"""

# KEYS: jobs stream. ARGV: group, consumer, entry id, job id, tenant. Puts a job this
# consumer read back at the end of the stream (its tenant runs all it may).
_DEFER = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if pending[1] and pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[4], 'tenant', ARGV[5])
return 1
"""

# KEYS: job. ARGV: TTL (ms), then field, value pairs. A new job's record, which expires
# unless its submit goes through (keep): a gateway dying in between leaves nothing.
_RECORD = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: job. ARGV: ticket. The job is queued: its record is kept (until it ends, when
# its TTL is set again); 0 if it expired meanwhile.
_KEEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'ticket', ARGV[1])
redis.call('PERSIST', KEYS[1])
return 1
"""

# KEYS: workers zset. ARGV: worker name, how long a silent worker is kept (ms). The
# worker is alive now, by Redis's clock (the same for every process whatever theirs).
_PRESENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return now
"""

# KEYS: workers zset. Returns Redis's time (ms), then each worker and when it was last
# heard from.
_CENSUS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""

SCRIPTS = {
    "submit": _SUBMIT,
    "start": _START,
    "append": _APPEND,
    "cancel": _CANCEL,
    "release": _RELEASE,
    "requeue": _REQUEUE,
    "dequeue": _DEQUEUE,
    "reserve": _RESERVE,
    "rate": _RATE,
    "defer": _DEFER,
    "heartbeat": _HEARTBEAT,
    "forget": _FORGET,
    "record": _RECORD,
    "keep": _KEEP,
    "present": _PRESENT,
    "census": _CENSUS,
}
"""Each script by the name the store calls it by."""
