"""A clock a test moves, for what a store times by the clock it is given.

The in-process stores (memory, SQLite) take ``clock=``: they read it for every time
they write or compare (a job's creation and end, its expiry, tenants' rates). A test
gives them a :class:`ManualClock` and moves it past a TTL at once, instead of waiting
for real time to pass (and, on a loaded machine, waiting longer still).
"""

from __future__ import annotations

START = 1_000_000_000.0
"""Where a clock starts unless told: 2001, far from today, so that a time taken from
the wall clock instead would be far off and show."""


class ManualClock:
    """The time, in seconds since the epoch, as a test sets it: called, it returns the
    time; it moves only when the test says so."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the time ``seconds`` on."""
        assert seconds >= 0, "a clock moves forward"
        self.now += seconds
