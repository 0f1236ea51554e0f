"""
A timer that holds at most one pending call: an idle timeout, a keepalive, a
poll, a waiter's deadline.  The one place that knows a delayed call must still
be active to be cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Timer:
    """
    At most one pending call on C{clock}.  L{arm} replaces what was pending;
    L{cancel} is harmless when nothing is.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._call: IDelayedCall | None = None

    @property
    def pending(self) -> bool:
        """Is a call waiting to run?"""
        return self._call is not None

    def arm(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        """Call C{f(*args)} in C{delay} seconds, instead of what was pending."""
        self.cancel()
        self._call = self._clock.callLater(delay, self._fire, f, args)

    def cancel(self) -> None:
        """Drop the pending call, if any."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self, f: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._call = None
        f(*args)
