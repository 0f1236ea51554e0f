"""
Failed starts and the back-off after them: a service whose start failed is
not started again for a while (1 s, doubling up to 60 s; reset by a start
that succeeds or a start action), so that a broken model costs only its own
clients, who are answered at once meanwhile with the reason and the last lines
the server wrote, instead of evicting the working models at every retry.
"""

from __future__ import annotations

import math

from attrs import evolve
from twisted.internet.interfaces import IReactorTime

from lmproxy.interfaces import ServiceUnavailable, StartFailure

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


class FailedStarts:
    """
    The failed starts of one service: how many, the last one, and when the
    next start is allowed.

    @ivar count: how many starts failed.
    @ivar last: the last failure, or None.
    """

    def __init__(self, service: str, clock: IReactorTime) -> None:
        """
        @param service: the service's name, for messages.
        @param clock: tells the time.
        """
        self._service = service
        self._clock = clock
        self._delay = 0.0
        self.count = 0
        self.last: StartFailure | None = None

    def failed(self, reason: str, retryable: bool, output_tail: tuple[str, ...]) -> float:
        """
        A start failed: back off, longer than last time.

        @param reason: why, fit for a client.
        @param retryable: False when the next try would fail the same way.
        @param output_tail: the last lines the server wrote.
        @return: the back-off, in seconds.
        """
        self.count += 1
        self._delay = min(self._delay * 2, BACKOFF_MAX_SECONDS) or BACKOFF_FIRST_SECONDS
        now = self._clock.seconds()
        self.last = StartFailure(now, reason, output_tail, retryable, now + self._delay)
        return self._delay

    def shown(self) -> StartFailure | None:
        """The last failure as C{/status} shows it: C{retry_at} None once the back-off is over."""
        if self.last is None or self._remaining() is not None:
            return self.last
        return evolve(self.last, retry_at=None)

    def error(self, message: str, retry_after: float) -> ServiceUnavailable:
        """What the clients of the last failure are told, with C{message}."""
        assert self.last is not None
        return ServiceUnavailable(
            message,
            retry_after=retry_after,
            retryable=self.last.retryable,
            output_tail=self.last.output_tail,
        )

    def refusal(self) -> ServiceUnavailable | None:
        """Why a new client is answered at once, or None: the service may start."""
        remaining = self._remaining()
        if remaining is None or self.last is None:
            return None
        message = (
            f"service {self._service!r} failed to start: {self.last.reason}"
            f" (next try in {math.ceil(remaining)} s)"
        )
        return self.error(message, remaining)

    def reset(self) -> bool:
        """A start succeeded, or someone asked for one: no back-off; True if there was one."""
        self._delay = 0.0
        if self.last is None or self.last.retry_at is None:
            return False
        self.last = evolve(self.last, retry_at=None)
        return True

    def _remaining(self) -> float | None:
        if self.last is None or self.last.retry_at is None:
            return None
        left = self.last.retry_at - self._clock.seconds()
        return left if left > 0 else None
