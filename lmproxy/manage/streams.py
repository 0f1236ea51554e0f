"""
The long-lived responses of the management API, as Server-Sent Events:
C{/events} (the status, then what changed) and C{/services/{name}/logs?follow=1}
(a log's tail, then its new lines).  Both keep the connection alive with
comments and write nothing while the client is not reading (flow control).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request
from zope.interface import implementer

from lmproxy.apishared import SseStream, sse
from lmproxy.interfaces import IBackends, IStatusObserver, StatusChange
from lmproxy.manage.logtail import LogFollower, Tail
from lmproxy.manage.statusjson import JSONObject, resource_json, service_json, status_json
from lmproxy.timers import Timer

# How many start_finished/evicted notices a paused (slow) /events client may
# have queued; older ones are dropped, the state events are always current.
MAX_QUEUED_NOTICES = 100


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


@implementer(IStatusObserver)
class EventStream(SseStream):
    """C{/events}: the status, then what changed, as SSE."""

    def __init__(
        self, request: Request, clock: IReactorTime, heartbeat: float, backends: IBackends
    ) -> None:
        super().__init__(request, clock, heartbeat)
        self._backends = backends
        # Names told changed and not yet looked at: looked at once per turn.
        self._changed_services: set[str] = set()
        self._changed_resources: set[str] = set()
        self._notices: deque[bytes] = deque(maxlen=MAX_QUEUED_NOTICES)
        self._sent_services: dict[str, JSONObject] = {}
        self._sent_resources: dict[str, JSONObject] = {}
        self._flush = Timer(clock)
        self._unsubscribe: Callable[[], None] = lambda: None

    def open(self) -> None:
        super().open()
        self._send_status()
        self._unsubscribe = self._backends.subscribe(self)

    def _send_status(self) -> None:
        """The whole status: at first, and when the set of services or resources changed."""
        document = status_json(self._backends.snapshot())
        self._sent_services = {s["name"]: s for s in document["services"]}
        self._sent_resources = dict(document["resources"])
        self.write(sse("status", _dumps(document)))

    def status_changed(self, change: StatusChange) -> None:
        self._changed_services |= change.services
        self._changed_resources |= change.resources
        self._schedule_flush()

    def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
        notice = {"service": service, "seconds": seconds, "succeeded": succeeded}
        self._notices.append(sse("start_finished", _dumps(notice)))
        self._schedule_flush()

    def service_evicted(self, service: str) -> None:
        self._notices.append(sse("evicted", _dumps({"service": service})))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # One flush per reactor turn however many changes it brings.
        if not (self._flush.pending or self.paused or self.closed):
            self._flush.arm(0, self._send_changes)

    def _send_changes(self) -> None:
        # In config order (the order of the first status document), and only
        # what differs from what this client was sent last.
        services, self._changed_services = self._changed_services, set()
        resources, self._changed_resources = self._changed_resources, set()
        try:
            if not (services <= self._sent_services.keys()):
                raise LookupError("a service was added")
            if not (resources <= self._sent_resources.keys()):
                raise LookupError("a resource was added")
            service_updates = [
                (name, service_json(self._backends.service_status(name)))
                for name in self._sent_services
                if name in services
            ]
            resource_updates = [
                (name, resource_json(self._backends.resource_status(name)))
                for name in self._sent_resources
                if name in resources
            ]
        except LookupError:  # a reload changed which there are: all of it again
            self._send_status()
            service_updates = resource_updates = []
        for name, as_json in service_updates:
            if self._sent_services[name] != as_json:
                self._sent_services[name] = as_json
                self.write(sse("service", _dumps(as_json)))
        for name, as_json in resource_updates:
            if self._sent_resources[name] != as_json:
                self._sent_resources[name] = as_json
                self.write(sse("resource", _dumps(as_json)))
        while self._notices:
            self.write(self._notices.popleft())

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._changed_services or self._changed_resources or self._notices:
            self._schedule_flush()

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self._unsubscribe()
        self._flush.cancel()


class LogStream(SseStream):
    """C{/services/{name}/logs?follow=1}: the tail, then new lines, as SSE."""

    def __init__(
        self,
        request: Request,
        clock: IReactorTime,
        heartbeat: float,
        path: str,
        tail: Tail,
        interval: float,
    ) -> None:
        super().__init__(request, clock, heartbeat)
        self._tail = tail.lines
        self._follower = LogFollower(path, clock, tail, self._lines, self._reset, interval)

    def open(self) -> None:
        super().open()
        if self._tail:
            self._lines(self._tail)
        self._follower.start()

    def _lines(self, lines: list[str]) -> None:
        self.write(sse("lines", "\n".join(lines)))

    def _reset(self) -> None:
        self.write(sse("reset", ""))

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self._follower.pause()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self._follower.resume()

    def close(self) -> None:
        super().close()
        self._follower.stop()


async def until_client_leaves() -> None:
    """Wait until Klein cancels the route because the client went away."""
    await Deferred()
