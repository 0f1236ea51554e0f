"""
Model control on the OpenAI port, so that a UI can warm a model before the
first question, free it, and show its state:

  - C{POST /v1/models/{id}/load[?wait=0]}: start its service; answered once
    it runs (200), or at once with C{wait=0} (202); 503 when it cannot start.
  - C{POST /v1/models/{id}/unload[?force=1]}: stop it; answered once it is
    stopped (200); 409 while requests are in flight, unless C{force}.
  - C{GET /v1/models/{id}/events}: Server-Sent Events of its entry (as
    C{GET /v1/models/{id}} gives it, C{status} and all): one at once, one
    at each change; a C{: keepalive} comment every 15 s.

Each answer carries the model's entry (L{lmproxy.listen.modellist}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from lmproxy.apishared import SseStream, query_flag, shielded
from lmproxy.interfaces import (
    IBackends,
    IStatusObserver,
    ServiceBusy,
    ServiceUnavailable,
    StatusChange,
    UnknownService,
)
from lmproxy.listen import forwarderrors
from lmproxy.listen.jsonerrors import encode, error_response, json_response, model_not_found
from lmproxy.listen.modellist import ModelTable
from lmproxy.timers import Timer

HEARTBEAT = 15.0
"""Seconds between the keepalive comments of an events stream."""


class ModelControl:
    """
    The load, unload and events routes' work.

    @param backends: start, stop and tell about the services.
    @param clock: paces the events streams.
    @param models: the port's models (changed in place on a reload).
    @param heartbeat: seconds between keepalive comments.
    """

    def __init__(
        self,
        backends: IBackends,
        clock: IReactorTime,
        models: ModelTable,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self._backends = backends
        self._clock = clock
        self._models = models
        self._heartbeat = heartbeat

    def _entry(self, model: str) -> dict[str, Any] | None:
        return self._models.entry(model, self._backends.snapshot())

    async def load(self, request: Request, model: str) -> bytes:
        """Start the service of C{model}; answer once it runs, or at once with C{wait=0}."""
        listing = self._models.listing(model)
        if listing is None:
            return model_not_found(request, model)
        wait = query_flag(request, "wait", True)
        if wait is None:
            return _bad_flag(request, "wait")
        # A client that leaves cancels neither the start nor anyone's wait for it.
        started = shielded(self._backends.start(listing.name))
        if not wait:
            started.addErrback(_dropped)  # the supervisor logs why a start fails
            return self._answer(request, 202, model)
        try:
            await started
        except UnknownService:  # removed by a reload meanwhile
            return model_not_found(request, model)
        except ServiceUnavailable as e:
            return forwarderrors.unavailable(listing.name, e).render(request)
        return self._answer(request, 200, model)

    async def unload(self, request: Request, model: str) -> bytes:
        """Stop the service of C{model}; answer once it is stopped."""
        listing = self._models.listing(model)
        if listing is None:
            return model_not_found(request, model)
        force = query_flag(request, "force", False)
        if force is None:
            return _bad_flag(request, "force")
        try:
            await shielded(self._backends.stop(listing.name, force))
        except UnknownService:
            return model_not_found(request, model)
        except ServiceBusy:
            message = f"Model {model!r} has requests in flight; unload with force=1 to cut them."
            return error_response(request, 409, message, code="model_busy")
        return self._answer(request, 200, model)

    def _answer(self, request: Request, status: int, model: str) -> bytes:
        entry = self._entry(model)
        if entry is None:
            return model_not_found(request, model)
        return json_response(request, status, entry)

    async def events(self, request: Request, model: str) -> bytes | None:
        """The events of C{model}, until the client leaves or the model goes."""
        if self._models.listing(model) is None:
            return model_not_found(request, model)
        stream = ModelEvents(
            request, self._clock, self._heartbeat, self._backends, self._models, model
        )
        stream.open()
        try:
            await stream.ended
        finally:
            stream.close()
        return None


@implementer(IStatusObserver)
class ModelEvents(SseStream):
    """
    The events of one model: its entry at once, and again whenever it
    changes (looked at once per reactor turn, as the management API's
    C{/events}); the stream ends (L{ended}) when a reload removes the model.

    @ivar ended: fires when the model is gone.
    """

    def __init__(
        self,
        request: Request,
        clock: IReactorTime,
        heartbeat: float,
        backends: IBackends,
        models: ModelTable,
        model: str,
    ) -> None:
        super().__init__(request, clock, heartbeat)
        self._backends = backends
        self._models = models
        self._model = model
        self._created = int(backends.snapshot().started_at)
        self._sent: dict[str, Any] | None = None
        self._dirty = False
        self._flush = Timer(clock)
        self._unsubscribe: Callable[[], None] = lambda: None
        self.ended: Deferred[None] = Deferred()

    def open(self) -> None:
        super().open()
        self._send()
        self._unsubscribe = self._backends.subscribe(self)

    def status_changed(self, change: StatusChange) -> None:
        # Any change may be a reload that moved or removed the model: cheap to look.
        self._dirty = True
        if not (self._flush.pending or self.paused or self.closed):
            self._flush.arm(0, self._send)

    def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
        """Shown by the state change that comes with it."""

    def service_evicted(self, service: str) -> None:
        """Shown by the state change that comes with it."""

    def _send(self) -> None:
        self._dirty = False
        listing = self._models.listing(self._model)
        try:
            status = None if listing is None else self._backends.service_status(listing.name)
        except UnknownService:
            status = None
        if listing is None or status is None:
            self._request.unregisterProducer()
            self.close()
            self.ended.callback(None)
            return
        entry = listing.entry(self._model, self._created, status)
        if entry != self._sent:
            self._sent = entry
            self.write(b"data: %s\n\n" % encode(entry))

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._dirty and not self.closed:
            self._flush.arm(0, self._send)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self._unsubscribe()
        self._flush.cancel()


def _bad_flag(request: Request, name: str) -> bytes:
    return error_response(request, 400, f"{name} must be 1 or 0 (true or false).", param=name)


def _dropped(failure: Failure) -> None:
    """The outcome of a start nobody waits for: known failures are the supervisor's to log."""
    failure.trap(ServiceUnavailable, UnknownService)
