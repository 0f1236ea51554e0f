"""
The last hour of every service, for the dashboard's timeline
(C{GET /timeline}): when it was in each state, when it was evicted, when a
start failed and why.

A service holds its C{ResourceRequirements} while it starts, runs and
stops, so its states say which service held which resource when.  The
recorder is an C{IStatusObserver}: it notes a service's state when a change
names it, and keeps what falls within L{SPAN_SECONDS}, plus the state each
service was in when that span began.
"""

from __future__ import annotations

from collections import deque

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from lmproxy.interfaces import IBackends, IStatusObserver, ServiceState, StatusChange
from lmproxy.manage.statusjson import JSONObject, rfc3339

SPAN_SECONDS = 3600.0
"""How far back the timeline goes."""

_MAX_ENTRIES = 10_000
"""At most this many changes and events are kept (a service flapping every second)."""


@frozen
class _Change:
    at: float
    service: str
    state: ServiceState


@frozen
class _Event:
    at: float
    service: str
    kind: str  # "evicted" or "failed"
    reason: str | None


@implementer(IStatusObserver)
class Timeline:
    """What every service did in the last L{SPAN_SECONDS}."""

    def __init__(self, backends: IBackends, clock: IReactorTime, span: float = SPAN_SECONDS):
        """
        @param backends: the services; the recorder subscribes to them.
        @param clock: the time of each change.
        @param span: how far back it keeps.
        """
        self._backends = backends
        self._clock = clock
        self._span = span
        now = clock.seconds()
        snapshot = backends.snapshot()
        # The state of each service when the kept span begins.
        self._first: dict[str, ServiceState] = {s.name: s.status for s in snapshot.services}
        self._last = dict(self._first)
        self._since = now
        self._changes: deque[_Change] = deque(maxlen=_MAX_ENTRIES)
        self._events: deque[_Event] = deque(maxlen=_MAX_ENTRIES)
        self.unsubscribe = backends.subscribe(self)

    # --- IStatusObserver ----------------------------------------------------

    def status_changed(self, change: StatusChange) -> None:
        """Note the new state of each service the change names, if it is new."""
        now = self._clock.seconds()
        for name in change.services:
            try:
                state = self._backends.service_status(name).status
            except LookupError:
                continue
            if self._last.get(name) != state:
                self._last[name] = state
                self._changes.append(_Change(now, name, state))
        self._prune(now)

    def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
        """Note a failed start, with its reason."""
        if succeeded:
            return
        failure = self._backends.service_status(service).last_failure
        reason = None if failure is None else failure.reason
        self._events.append(_Event(self._clock.seconds(), service, "failed", reason))

    def service_evicted(self, service: str) -> None:
        """Note an eviction."""
        self._events.append(_Event(self._clock.seconds(), service, "evicted", None))

    # --- The document ---------------------------------------------------------

    def _prune(self, now: float) -> None:
        horizon = now - self._span
        if self._since >= horizon:
            return
        self._since = horizon
        while self._changes and self._changes[0].at <= horizon:
            change = self._changes.popleft()
            self._first[change.service] = change.state
        while self._events and self._events[0].at <= horizon:
            self._events.popleft()

    def json(self) -> JSONObject:
        """
        C{{"since", "now", "services": [{"name", "states": [{"state",
        "from", "to"}]}], "events": [{"at", "service", "kind", "reason"}]}}:
        each service's states as spans (the last one's C{to} is C{null}: it
        lasts), in config order; times in RFC 3339.
        """
        now = self._clock.seconds()
        self._prune(now)
        spans: dict[str, list[JSONObject]] = {}
        for name, state in self._first.items():
            spans[name] = [{"state": state, "from": rfc3339(self._since), "to": None}]
        for change in self._changes:
            lane = spans.setdefault(change.service, [])
            if lane:
                lane[-1]["to"] = rfc3339(change.at)
            lane.append({"state": change.state, "from": rfc3339(change.at), "to": None})
        names = [s.name for s in self._backends.snapshot().services]
        return {
            "since": rfc3339(self._since),
            "now": rfc3339(now),
            "services": [{"name": name, "states": spans.get(name, [])} for name in names],
            "events": [
                {
                    "at": rfc3339(event.at),
                    "service": event.service,
                    "kind": event.kind,
                    "reason": event.reason,
                }
                for event in self._events
            ],
        }
