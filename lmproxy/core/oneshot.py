"""
Something that happens once (a process exited, its pipes closed) that any
number of callers may wait for, before or after it happened; a wait that is
cancelled is forgotten.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed


class OneShot:
    """An event that happens at most once."""

    def __init__(self) -> None:
        self.happened = False
        self._waiters: list[Deferred[None]] = []

    def fire(self) -> None:
        """It happened: every wait ends, and waits from now on end at once."""
        self.happened = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> Deferred[None]:
        """Fires once it has happened (at once if it has)."""
        if self.happened:
            return succeed(None)

        def forget(d: Deferred[None]) -> None:
            self._waiters.remove(d)

        d: Deferred[None] = Deferred(forget)
        self._waiters.append(d)
        return d
