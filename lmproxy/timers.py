"""
A timer that holds at most one pending call: an idle timeout, a keepalive, a
poll, a waiter's deadline.  The one place that knows a delayed call must still
be active to be cancelled.  L{Timer.push} is the lazy variant for a deadline
that moves at every use (an idle timeout): it costs no reactor call per use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime


def _nothing() -> None:
    """What a timer never pushed would call."""


class Timer:
    """
    At most one pending call on C{clock}.  L{arm} replaces what was pending,
    L{push} moves its deadline lazily; L{cancel} is harmless when nothing is.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._call: IDelayedCall | None = None
        # For push(): when the pending call is due (infinite for an armed
        # one, which push() replaces), the deadline to meet, and what to call.
        self._due = math.inf
        self._deadline = math.inf
        self._target: tuple[Callable[..., Any], tuple[Any, ...]] = (_nothing, ())

    @property
    def pending(self) -> bool:
        """Is a call waiting to run?"""
        return self._call is not None

    def arm(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        """Call C{f(*args)} in C{delay} seconds, instead of what was pending."""
        self.cancel()
        self._due = math.inf
        self._call = self._clock.callLater(delay, self._fire, f, args)

    def push(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        """
        Like L{arm}, but lazy: a pending pushed call due sooner is kept, and
        when it fires, it re-arms for the deadline set here.  A timer pushed at
        every request so costs no reactor call per request.
        """
        deadline = self._clock.seconds() + delay
        self._target = (f, args)
        if self._call is not None and self._due <= deadline:
            self._deadline = deadline
            return
        self.cancel()
        self._due = self._deadline = deadline
        self._call = self._clock.callLater(delay, self._fire_pushed)

    def _fire_pushed(self) -> None:
        if self._deadline != self._due:  # pushed since it was armed: wait for the rest
            self._due = self._deadline
            rest = max(0.0, self._deadline - self._clock.seconds())
            self._call = self._clock.callLater(rest, self._fire_pushed)
            return
        self._fire(*self._target)

    def cancel(self) -> None:
        """Drop the pending call, if any."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self, f: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._call = None
        f(*args)
