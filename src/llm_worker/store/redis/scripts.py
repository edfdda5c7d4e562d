"""The Lua scripts that change a Redis job store, each with its keys and arguments named
and its reply read into a type.

A :class:`Script` names its ``KEYS`` and ``ARGV``: the Lua reads them under those
names (a prelude binds ``local job_key = KEYS[1]`` and so on), and Python passes
them by keyword (:meth:`Scripts.run`), so neither side counts positions. Its reply,
a Lua table or number, is read once, here, into a value that says what it means.
Where each key lives is :mod:`.layout`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from llm_worker.jobs.model import JobState
from llm_worker.store.redis.burial import EXPIRE
from llm_worker.store.redis.layout import decoded

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Script(Generic[R]):
    """One script: its source, its keys' and arguments' names, how its reply reads.

    ``rest``, when set, names a list passed after the named arguments; the Lua finds
    its first item at ``ARGV[<rest>_from]``.
    """

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    body: str
    reply: Callable[[Any], R]
    rest: str | None = None

    @property
    def source(self) -> str:
        """The Lua, its keys and arguments bound to their names."""
        lines = [f"local {name} = KEYS[{i}]" for i, name in enumerate(self.keys, 1)]
        lines += [f"local {name} = ARGV[{i}]" for i, name in enumerate(self.args, 1)]
        if self.rest is not None:
            lines.append(f"local {self.rest}_from = {len(self.args) + 1}")
        return "\n".join(lines) + "\n" + self.body

    def lay_out(self, named: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        """``KEYS`` and ``ARGV`` from keyword arguments; a missing or unknown name is a
        :class:`TypeError`."""
        expected = {*self.keys, *self.args, *((self.rest,) if self.rest else ())}
        if named.keys() != expected:
            missing = sorted(expected - named.keys())
            unknown = sorted(named.keys() - expected)
            raise TypeError(f"script {self.name}: missing {missing}, unknown {unknown}")
        keys = [named[name] for name in self.keys]
        args = [named[name] for name in self.args]
        if self.rest is not None:
            args += list(named[self.rest])
        return keys, args


class Scripts:
    """The scripts registered with one client: run by keyword, or queued in a pipeline."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._registered = {script.name: client.register_script(script.source) for script in ALL}

    async def run(self, script: Script[R], **named: Any) -> R:
        """Run ``script`` (loading it first if Redis has not got it) and read its reply. A
        script not in :data:`ALL` (one only run, never queued) is registered at first use."""
        keys, args = script.lay_out(named)
        if script.name not in self._registered:
            self._registered[script.name] = self._client.register_script(script.source)
        return script.reply(await self._registered[script.name](keys=keys, args=args))

    def queue(self, pipe: Any, script: Script[Any], **named: Any) -> None:
        """Add a call of ``script`` by its SHA to ``pipe`` (a cluster's pipelines take
        EVALSHA only this way); its raw reply is read with ``script.reply``."""
        keys, args = script.lay_out(named)
        sha = self._registered[script.name].sha
        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)

    async def load(self, client: Any) -> None:
        """Every script into Redis (on a cluster, into every node): pipelines call them
        by their SHA, and a node that restarted has forgotten them."""
        for registered in self._registered.values():
            await client.script_load(registered.script)


# -- replies ------------------------------------------------------------------


class Submitted(NamedTuple):
    """A submit's outcome: the job's ticket, or what is full (``jobs``, ``tenant``,
    ``bytes``) and the ticket 0."""

    ticket: int
    full: str | None


_FULL = {-1: "jobs", -3: "tenant", -4: "bytes"}


def _submitted(reply: Any) -> Submitted:
    ticket = int(reply)
    return Submitted(0, _FULL[ticket]) if ticket < 0 else Submitted(ticket, None)


class Started(NamedTuple):
    """A start's outcome: the attempt that holds the job, or 0 and the state that
    forbade starting it (``missing`` for a job gone)."""

    attempt: int
    refused: str | None
    seq: int = 0
    spec: bytes | None = None
    tenant: str = ""
    created_at: float = 0.0


def _started(reply: Any) -> Started:
    attempt, state, *rest = reply
    if not int(attempt) or not rest or rest[1] is None:
        return Started(0, decoded(state) or "missing")
    seq, spec, tenant, created_at = rest
    return Started(
        int(attempt), None, int(seq), spec, decoded(tenant or b""), float(created_at or 0)
    )


def _seq_or_lost(reply: Any) -> int | None:
    """A seq, or ``None`` where the attempt no longer holds the job (the Lua's -1)."""
    value = int(reply)
    return None if value < 0 else value


def _state_before(reply: Any) -> JobState | None:
    state = decoded(reply)
    return None if state == "missing" else JobState(state)


class Census(NamedTuple):
    """Redis's time (ms), and each worker with when it was last heard from (ms)."""

    now_ms: int
    heard: list[tuple[str, float]]


def _census(reply: Any) -> Census:
    now, flat = reply
    return Census(
        int(now), [(decoded(n), float(s)) for n, s in zip(flat[::2], flat[1::2], strict=True)]
    )


def _done(reply: Any) -> bool:
    return bool(int(reply))


def _nothing(reply: Any) -> None:
    return None


def _entries(reply: Sequence[Any]) -> set[str]:
    return {decoded(entry) for entry in reply}


# -- the scripts ----------------------------------------------------------------

SUBMIT = Script(
    "submit",
    keys=("jobs_key", "pending_key", "tickets_key", "counts_key", "recent_key", "scheduled_key"),
    args=(
        "job_id",
        "run_at_ms",
        "queue_max",
        "tenant",
        "tenant_max",
        "size",
        "max_bytes",
        "created_at",
        "wake_channel",
        "publish",
    ),
    reply=_submitted,
    # Queues the job (the same ticket when a retry finds it queued already) unless
    # the queue, the tenant's share of it (tenant_max -1: no share) or its bytes are
    # full. A queued job joins the index of recent jobs; a refused one never does.
    body="""
local q = redis.call('ZSCORE', pending_key, job_id) or redis.call('ZSCORE', scheduled_key, job_id)
if q then return tonumber(q) end
if redis.call('ZCARD', pending_key) >= tonumber(queue_max) then return -1 end
local share = tonumber(tenant_max)
if share >= 0 and tonumber(redis.call('HGET', counts_key, 'q:' .. tenant) or 0) >= share
then return -3 end
local bytes = tonumber(size)
if tonumber(redis.call('HGET', counts_key, 'bytes') or 0) + bytes > tonumber(max_bytes) then
  return -4
end
local ticket = redis.call('INCR', tickets_key)
if tonumber(run_at_ms) > 0 then redis.call('ZADD', scheduled_key, run_at_ms, job_id) else
  redis.call('XADD', jobs_key, '*', 'job', job_id, 'tenant', tenant)
  redis.call('ZADD', pending_key, ticket, job_id) end
redis.call('HINCRBY', counts_key, 'q:' .. tenant, 1)
redis.call('HINCRBY', counts_key, 'bytes', bytes)
redis.call('HSET', counts_key, 'of:' .. job_id, tenant .. ' ' .. bytes)
redis.call('ZADD', recent_key, created_at, job_id)
redis.call(publish, wake_channel, run_at_ms)
return ticket
""",
)

DEQUEUE = Script(
    "dequeue",
    keys=("pending_key", "counts_key"),
    args=("job_id", "moved_channel", "publish"),
    reply=_done,
    # Takes a job out of the queue, and out of the counts; false if it was not queued.
    body="""
if redis.call('ZREM', pending_key, job_id) == 0 then return 0 end
local of = redis.call('HGET', counts_key, 'of:' .. job_id)
if of then
  local tenant, size = string.match(of, '^(.*) (%d+)$')
  redis.call('HDEL', counts_key, 'of:' .. job_id)
  if redis.call('HINCRBY', counts_key, 'q:' .. tenant, -1) <= 0 then
    redis.call('HDEL', counts_key, 'q:' .. tenant)
  end
  redis.call('HINCRBY', counts_key, 'bytes', -tonumber(size))
end
redis.call(publish, moved_channel, job_id)
return 1
""",
)

RESERVE = Script(
    "reserve",
    keys=("running_key",),
    args=("job_id", "now_ms", "lease_ms", "limit"),
    reply=_done,
    # Holds one of the tenant's running places for the job; false when all are taken.
    # Leases whose worker stopped renewing them have run out and count no more.
    body="""
redis.call('ZREMRANGEBYSCORE', running_key, '-inf', now_ms)
if redis.call('ZSCORE', running_key, job_id)
  or redis.call('ZCARD', running_key) < tonumber(limit) then
  redis.call('ZADD', running_key, tonumber(now_ms) + tonumber(lease_ms), job_id)
  return 1
end
return 0
""",
)

# ``now``: the time in ms by Redis's own clock, the same for every process whatever theirs.
NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"""

RATE = Script(
    "rate",
    keys=("rate_key",),
    args=("interval_ms", "burst_ms"),
    reply=int,
    # 0 when the tenant may add a job now (and it counts), else the ms to wait (GCRA).
    body=NOW_MS
    + """
local interval = tonumber(interval_ms)
local arrival = math.max(tonumber(redis.call('GET', rate_key) or now), now)
local allowed_from = arrival - tonumber(burst_ms) + interval
if now < allowed_from then return allowed_from - now end
redis.call('SET', rate_key, arrival + interval, 'PX', arrival + interval - now + 1000)
return 0
""",
)

START = Script(
    "start",
    keys=("job_key", "events_key"),
    args=("owner", "takeover"),
    reply=_started,
    # A fresh entry starts a pending job only; one taken over from a dead worker
    # (takeover 1), a running one too. Starting again what this owner holds already
    # (a retry) answers the same attempt.
    body="""
local state, attempt, held_by = unpack(redis.call('HMGET', job_key, 'state', 'attempt', 'owner'))
if not state then return {0, 'missing'} end
if state == 'running' and held_by == owner then
  local held = redis.call('HMGET', job_key, 'seq', 'spec', 'tenant', 'created_at')
  return {tonumber(attempt), '', unpack(held)}
end
if state ~= 'pending' and not (state == 'running' and takeover == '1') then
  return {0, state}
end
attempt = redis.call('HINCRBY', job_key, 'attempt', 1)
redis.call('HSET', job_key, 'state', 'running', 'owner', owner, 'op', 0)
local seq = tonumber(redis.call('HGET', job_key, 'seq'))
if attempt > 1 then
  seq = redis.call('HINCRBY', job_key, 'seq', 1)
  redis.call('XADD', events_key, '0-' .. seq, 'k', 'reset', 'm', '', 'a', attempt)
  redis.call('HSET', job_key, 'start', seq - 1)
end
return {attempt, '', seq, unpack(redis.call('HMGET', job_key, 'spec', 'tenant', 'created_at'))}
""",
)

APPEND = Script(
    "append",
    keys=("job_key", "events_key", "gone_key"),
    args=("attempt", "last_op", "ttl_ms", "now", "tombstone_ms"),
    rest="events",
    reply=_seq_or_lost,
    # events: each event's kind and message. Appends the batch unless the attempt no
    # longer holds the job (None). A batch applied already (a retry after a reply
    # that got lost) answers the seq it ended at.
    body=EXPIRE
    + """
local state, holder, op, opseq, seq =
  unpack(redis.call('HMGET', job_key, 'state', 'attempt', 'op', 'opseq', 'seq'))
if holder ~= attempt then return -1 end
if tonumber(op) >= tonumber(last_op) then return tonumber(opseq) end
if state ~= 'running' then return -1 end
seq = tonumber(seq)
for i = events_from, #ARGV, 2 do
  seq = seq + 1
  local kind = ARGV[i]
  redis.call('XADD', events_key, '0-' .. seq, 'k', kind, 'm', ARGV[i + 1], 'a', attempt)
  if kind == 'done' or kind == 'failed' then
    redis.call('HSET', job_key, 'state', kind, 'finished_at', now)
    if kind == 'failed' then redis.call('HSET', job_key, 'error', ARGV[i + 1]) end
    expire()
  end
end
redis.call('HSET', job_key, 'seq', seq, 'op', last_op, 'opseq', seq)
return seq
""",
)

CANCEL = Script(
    "cancel",
    keys=("job_key", "events_key", "gone_key"),
    args=("ttl_ms", "now", "tombstone_ms"),
    reply=_state_before,
    # The state before (None: no such job); a pending or running job ends cancelled.
    body=EXPIRE
    + """
local state, attempt = unpack(redis.call('HMGET', job_key, 'state', 'attempt'))
if not state then return 'missing' end
if state ~= 'pending' and state ~= 'running' then return state end
local seq = redis.call('HINCRBY', job_key, 'seq', 1)
redis.call('XADD', events_key, '0-' .. seq, 'k', 'cancelled', 'm', '', 'a', attempt)
redis.call('HSET', job_key, 'state', 'cancelled', 'finished_at', now)
expire()
return state
""",
)

RELEASE = Script(
    "release",
    keys=("job_key",),
    args=("attempt",),
    reply=_seq_or_lost,
    # The running job is pending again: its ticket, or None if the attempt lost it.
    body="""
local state, holder, ticket = unpack(redis.call('HMGET', job_key, 'state', 'attempt', 'ticket'))
if state ~= 'running' or holder ~= attempt then return -1 end
redis.call('HSET', job_key, 'state', 'pending', 'owner', '')
return tonumber(ticket)
""",
)

HEARTBEAT = Script(
    "heartbeat",
    keys=("jobs_key",),
    args=("group", "consumer"),
    rest="entries",
    reply=_entries,
    # Re-claims (so refreshes) the entries this consumer still owns; answers those.
    body="""
local kept = {}
for i = entries_from, #ARGV do
  local pending = redis.call('XPENDING', jobs_key, group, ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == consumer then
    redis.call('XCLAIM', jobs_key, group, consumer, 0, ARGV[i], 'JUSTID')
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
""",
)

FORGET = Script(
    "forget",
    keys=("jobs_key",),
    args=("group", "consumer", "entry"),
    reply=_done,
    # Acknowledges and deletes the entry unless another consumer took it over.
    body="""
local pending = redis.call('XPENDING', jobs_key, group, entry, entry, 1)
if pending[1] and pending[1][2] ~= consumer then return 0 end
redis.call('XACK', jobs_key, group, entry)
redis.call('XDEL', jobs_key, entry)
return 1
""",
)

REQUEUE = Script(
    "requeue",
    keys=("jobs_key", "pending_key", "counts_key"),
    args=("job_id", "ticket", "tenant", "size"),
    reply=_done,
    # The job waits again, in its old place; false if it was queued already.
    body="""
if redis.call('ZADD', pending_key, 'NX', ticket, job_id) == 0 then return 0 end
redis.call('XADD', jobs_key, '*', 'job', job_id, 'tenant', tenant)
redis.call('HINCRBY', counts_key, 'q:' .. tenant, 1)
redis.call('HINCRBY', counts_key, 'bytes', tonumber(size))
redis.call('HSET', counts_key, 'of:' .. job_id, tenant .. ' ' .. size)
return 1
""",
)

DEFER = Script(
    "defer",
    keys=("jobs_key",),
    args=("group", "consumer", "entry", "job_id", "tenant"),
    reply=_done,
    # Puts a job this consumer read back at the end of the stream (its tenant runs
    # all it may); false if another consumer took the entry over.
    body="""
local pending = redis.call('XPENDING', jobs_key, group, entry, entry, 1)
if pending[1] and pending[1][2] ~= consumer then return 0 end
redis.call('XACK', jobs_key, group, entry)
redis.call('XDEL', jobs_key, entry)
redis.call('XADD', jobs_key, '*', 'job', job_id, 'tenant', tenant)
return 1
""",
)

RECORD = Script(
    "record",
    keys=("job_key",),
    args=("ttl_ms",),
    rest="fields",
    reply=_nothing,
    # fields: field, value pairs. A new job's record, which expires unless its submit
    # goes through (KEEP): a gateway dying in between leaves nothing.
    body="""
redis.call('HSET', job_key, unpack(ARGV, fields_from))
redis.call('PEXPIRE', job_key, ttl_ms)
return 1
""",
)

KEEP = Script(
    "keep",
    keys=("job_key",),
    args=("ticket",),
    reply=_done,
    # The job is queued: its record is kept (until it ends, when its TTL is set
    # again); false if it expired meanwhile.
    body="""
if redis.call('EXISTS', job_key) == 0 then return 0 end
redis.call('HSET', job_key, 'ticket', ticket)
redis.call('PERSIST', job_key)
return 1
""",
)

PRESENT = Script(
    "present",
    keys=("workers_key",),
    args=("worker", "forget_after_ms"),
    reply=int,
    # The worker is alive now, by Redis's clock (the same for every process whatever
    # theirs); workers silent for forget_after_ms are dropped. Answers that time (ms).
    body=NOW_MS
    + """
redis.call('ZADD', workers_key, now, worker)
redis.call('ZREMRANGEBYSCORE', workers_key, '-inf', now - tonumber(forget_after_ms))
return now
""",
)

CENSUS = Script(
    "census",
    keys=("workers_key",),
    args=(),
    reply=_census,
    body=NOW_MS
    + """
return {now, redis.call('ZRANGE', workers_key, 0, -1, 'WITHSCORES')}
""",
)

ALL: tuple[Script[Any], ...] = (
    *(SUBMIT, DEQUEUE, RESERVE, RATE, START, APPEND, CANCEL, RELEASE),
    *(HEARTBEAT, FORGET, REQUEUE, DEFER, RECORD, KEEP, PRESENT, CENSUS),
)
"""Every script, registered with each client."""
