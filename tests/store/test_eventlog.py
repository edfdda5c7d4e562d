"""A job's log as a process holds it (pure unit)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from llm_worker.jobs.model import Event, EventKind, output_of
from llm_worker.store.eventlog import EventLog


def filled() -> EventLog:
    log = EventLog()
    log.add(Event(1, EventKind.RUNNING, "", 1))
    log.add(Event(2, EventKind.RUNNING, "old", 1))
    log.add(Event(10, EventKind.RESET, "", 2))  # a re-run skips seqs after a crash
    log.add(Event(11, EventKind.RUNNING, "", 2))
    log.add(Event(12, EventKind.RUNNING, "new", 2))
    log.add(Event(13, EventKind.DONE, "", 2))
    log.show()
    return log


def test_readers_see_the_current_attempt_only() -> None:
    log = filled()
    assert [e.seq for e in log.since()] == [10, 11, 12, 13]
    assert [e.seq for e in log.since(after=2)] == [10, 11, 12, 13]
    assert [e.seq for e in log.since(after=11)] == [12, 13]
    assert output_of(log.since()) == "new"
    assert log.last_seq == 13
    assert log.finished
    with pytest.raises(ValueError, match="does not follow"):
        log.add(Event(13, EventKind.RUNNING, "again", 2))


async def test_a_frozen_log_reads_the_same_and_costs_the_collector_nothing() -> None:
    log = filled()
    before = (log.since(), log.since(after=11), output_of(log.since()), log.last_seq)
    log.freeze()
    assert (log.since(), log.since(after=11), output_of(log.since()), log.last_seq) == before
    batches = [batch async for batch in log.follow(after=0)]
    assert batches == [before[0]]
    # Nothing after `after`: the terminal event alone, however far past it.
    assert [batch async for batch in log.follow(after=13)] == [[before[0][-1]]]
    assert [batch async for batch in log.follow(after=99)] == [[before[0][-1]]]
    # CPython untracks tuples of plain values as collections come across them.
    gc.collect()
    gc.collect()
    assert not gc.is_tracked(log.events._rows)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="frozen"):
        log.add(Event(14, EventKind.RUNNING, "late", 2))


async def test_followers_get_batches_of_what_accumulated() -> None:
    log = EventLog()
    seen: list[list[int]] = []

    async def follow() -> None:
        async for batch in log.follow():
            seen.append([e.seq for e in batch])

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    log.add(Event(1, EventKind.RUNNING, "", 1))
    log.add(Event(2, EventKind.RUNNING, "a", 1))
    log.show()
    await asyncio.sleep(0)
    log.add(Event(3, EventKind.DONE, "", 1))
    log.show()
    await asyncio.wait_for(task, 1)
    assert seen == [[1, 2], [3]]


async def test_readers_see_only_what_was_shown() -> None:
    log = EventLog()
    log.add(Event(1, EventKind.RUNNING, "", 1))
    log.add(Event(2, EventKind.RUNNING, "saved", 1))
    log.show(through=2)
    log.add(Event(3, EventKind.RUNNING, " not yet", 1))
    log.add(Event(4, EventKind.DONE, "", 1))
    # The writer knows of everything; readers of what is shown only.
    assert (log.last_seq, log.ended) == (4, True)
    assert (log.shown_seq, log.finished) == (2, False)
    assert [e.seq for e in log.since()] == [1, 2]
    follower = log.follow()
    assert [e.seq for e in await anext(follower)] == [1, 2]
    waiting = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0)
    assert not waiting.done()
    # What could not be saved is dropped, unseen; the end written instead is shown.
    assert log.truncate() == 2
    log.add(Event(3, EventKind.FAILED, "the store failed", 1))
    log.show()
    assert [e.seq for e in await waiting] == [3]
    assert log.finished
    await follower.aclose()


def test_a_reset_counts_for_readers_once_shown() -> None:
    log = EventLog()
    log.add(Event(1, EventKind.RUNNING, "", 1))
    log.add(Event(2, EventKind.RUNNING, "old", 1))
    log.show()
    log.add(Event(5, EventKind.RESET, "", 2))
    assert [e.seq for e in log.since()] == [1, 2]
    log.show()
    assert [e.seq for e in log.since()] == [5]


async def test_a_listener_ahead_of_the_log_gets_nothing_twice() -> None:
    # Resuming after seq 3 on a mirror that has shown only seq 1 so far.
    log = EventLog()
    log.add(Event(1, EventKind.RUNNING, "", 1))
    log.show()
    follower = log.follow(after=3)
    waiting = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0)
    for seq in (2, 3, 4, 5):
        log.add(Event(seq, EventKind.RUNNING, f"t{seq}", 1))
    log.show(through=3)
    await asyncio.sleep(0)
    assert not waiting.done()
    log.show()
    assert [e.seq for e in await waiting] == [4, 5]
    await follower.aclose()
