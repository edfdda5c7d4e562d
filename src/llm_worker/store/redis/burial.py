"""How a job that ended expires in Redis: the Lua its ending scripts share.

``expire()`` sets the TTL of the job's record and log (``ttl_ms``, ``JOB_TTL_SECONDS``)
and leaves its tombstone (:mod:`llm_worker.store.tombstones`): when the record expires,
and whose job it was, kept ``tombstone_ms`` past that, so that a client asking later is
told the job expired rather than that it never was. The script defines ``job_key``,
``events_key``, ``gone_key``, ``ttl_ms``, ``tombstone_ms`` and ``now`` (seconds).
"""

EXPIRE = """
local function expire()
  redis.call('PEXPIRE', job_key, ttl_ms)
  redis.call('PEXPIRE', events_key, ttl_ms)
  local expired_at = tonumber(now) + tonumber(ttl_ms) / 1000
  local tenant = redis.call('HGET', job_key, 'tenant') or ''
  redis.call('SET', gone_key, expired_at .. ' ' .. tenant,
    'PX', tonumber(ttl_ms) + tonumber(tombstone_ms))
end
"""
