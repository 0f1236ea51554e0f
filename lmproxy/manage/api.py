"""
The management API (a Klein app served on ``ManagementApi.ListenPort``).

Routes:

- ``GET /status``: every service and resource (see L{lmproxy.manage.statusjson}).
- ``POST /services/{name}/start``, ``POST /services/{name}/stop[?force=1]``.
- ``GET /events``: Server-Sent Events.  On connect one ``status`` event (the
  whole ``/status`` document); then ``service`` (one service object) and
  ``resource`` (one resource object) for each one that changed, changes of
  one reactor turn coalesced; ``start_finished`` (``{"service", "seconds",
  "succeeded"}``) and ``evicted`` (``{"service"}``); a ``: keepalive``
  comment every 15 s.
- ``GET /services/{name}/logs?tail=N[&follow=1]``: the log's last lines as
  text; with ``follow``, SSE ``lines`` events (one ``data:`` field per line)
  and a ``reset`` event when the file was truncated or replaced.
- ``GET /metrics``: Prometheus text format (see L{lmproxy.manage.metrics}).
- ``GET /`` and ``GET /dashboard/{file}``: the dashboard.

Everything is answered from ``IBackends.snapshot()`` and never waits on a
start or a resource check.  Errors are JSON: ``{"error": message}``, plus
``"service"`` (its state) where one is concerned.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter
from zope.interface import implementer

from lmproxy.config import Config
from lmproxy.interfaces import (
    IBackends,
    IStatusObserver,
    ServiceBusy,
    ServiceUnavailable,
    StatusChange,
    UnknownService,
)
from lmproxy.logs import log_observer
from lmproxy.manage.logtail import MAX_TAIL_LINES, LogFollower, Tail, read_tail
from lmproxy.manage.metrics import Metrics
from lmproxy.manage.statusjson import JSONObject, resource_json, service_json, status_json

HEARTBEAT_SECONDS = 15.0
LOG_POLL_SECONDS = 0.5
DEFAULT_TAIL_LINES = 100
# How many start_finished/evicted notices a paused (slow) /events client may
# have queued; older ones are dropped, the state events are always current.
MAX_QUEUED_NOTICES = 100

_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The dashboard builds its DOM from data with textContent only; this policy is
# a second line of defence should a bug ever let markup through.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TRUE = {"1", "true", "yes", "on"}

_log = Logger(observer=log_observer)


class _NameConverter(BaseConverter):
    """A service name: anything, slashes included (``Qwen/Qwen2.5-7B``)."""

    part_isolating = False
    regex = ".+?"
    weight = 200


def sse(event: str, data: str) -> bytes:
    """One Server-Sent Event; ``data`` may hold several lines (``\\n``)."""
    fields = [f"event: {event}"] + [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(fields) + "\n\n").encode("utf-8")


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    return values[-1].decode("utf-8", errors="replace") if values else None


def _shielded(d: Deferred[None]) -> Deferred[None]:
    """
    A Deferred that follows ``d`` but whose cancellation (the HTTP client left)
    does not cancel ``d``: an action asked for is carried out all the same.
    """
    result: Deferred[None] = Deferred()

    def done(outcome: Failure | None) -> None:
        if result.called:
            if isinstance(outcome, Failure):
                _log.info("Action failed after its client left: {error}", error=outcome.value)
        elif isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(None)

    d.addBoth(done)
    return result


@implementer(IPushProducer)
class _SseStream:
    """
    An open ``text/event-stream`` response: headers, keepalive comments, and
    flow control (nothing is written while the client is not reading).
    """

    def __init__(self, request: Request, clock: IReactorTime, heartbeat: float) -> None:
        self._request = request
        self._clock = clock
        self._heartbeat = heartbeat
        self._beat: IDelayedCall | None = None
        self.paused = False
        self.closed = False

    def open(self) -> None:
        """Send the headers and start the keepalive comments."""
        self._request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        self._request.setHeader(b"Cache-Control", b"no-store")
        # Reverse proxies (nginx) would otherwise buffer the stream.
        self._request.setHeader(b"X-Accel-Buffering", b"no")
        self._request.registerProducer(self, True)
        # Reconnect after 1 s rather than the browser's default 3 s.
        self._request.write(b"retry: 1000\n\n")
        self._beat = self._clock.callLater(self._heartbeat, self._keepalive)

    def _keepalive(self) -> None:
        if not self.paused:
            self._request.write(b": keepalive\n\n")
        self._beat = self._clock.callLater(self._heartbeat, self._keepalive)

    def write(self, data: bytes) -> None:
        self._request.write(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.close()

    def close(self) -> None:
        """The client left: release everything.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None


@implementer(IStatusObserver)
class _EventStream(_SseStream):
    """``/events``: the status, then what changed, as SSE."""

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
        self._flush_call: IDelayedCall | None = None
        self._unsubscribe: Callable[[], None] = lambda: None

    def open(self) -> None:
        super().open()
        snapshot = self._backends.snapshot()
        document = status_json(snapshot)
        self._sent_services = {s["name"]: s for s in document["services"]}
        self._sent_resources = dict(document["resources"])
        self.write(sse("status", _dumps(document)))
        self._unsubscribe = self._backends.subscribe(self)

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
        if self._flush_call is None and not (self.paused or self.closed):
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        # In config order (the order of the first status document), and only
        # what differs from what this client was sent last.
        services, self._changed_services = self._changed_services, set()
        for name in [n for n in self._sent_services if n in services]:
            as_json = service_json(self._backends.service_status(name))
            if self._sent_services[name] != as_json:
                self._sent_services[name] = as_json
                self.write(sse("service", _dumps(as_json)))
        resources, self._changed_resources = self._changed_resources, set()
        for name in [n for n in self._sent_resources if n in resources]:
            as_json = resource_json(self._backends.resource_status(name))
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
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None


class _LogStream(_SseStream):
    """``/services/{name}/logs?follow=1``: the tail, then new lines, as SSE."""

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


async def _until_client_leaves() -> None:
    """Wait until Klein cancels the route because the client went away."""
    await Deferred()


class ManagementApi:
    """
    The management API and dashboard; serve ``api.app.resource()``.

    ``clock`` drives coalescing, keepalives and log polling; the intervals can
    be changed for tests.
    """

    app = Klein()
    app.url_map.converters["name"] = _NameConverter

    def __init__(
        self,
        backends: IBackends,
        config: Config,
        clock: IReactorTime,
        heartbeat: float = HEARTBEAT_SECONDS,
        log_poll_interval: float = LOG_POLL_SECONDS,
    ) -> None:
        self._backends = backends
        self._config = config
        self._clock = clock
        self._heartbeat = heartbeat
        self._log_poll_interval = log_poll_interval
        self.metrics = Metrics(backends)

    # Helpers

    def _json(self, request: IRequest, code: int, body: object) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return _dumps(body).encode("utf-8")

    def _error(
        self, request: IRequest, code: int, message: str, service: str | None = None
    ) -> bytes:
        body: dict[str, Any] = {"error": message}
        if service is not None:
            body["service"] = self._service_json(service)
        return self._json(request, code, body)

    def _service_json(self, name: str) -> JSONObject | None:
        for service in self._backends.snapshot().services:
            if service.name == name:
                return service_json(service)
        return None

    def _cross_origin(self, request: IRequest) -> bool:
        """
        True for a browser request sent by another site's page (which could
        otherwise stop services with a plain HTML form); tools that send no
        Origin, like curl, are never refused.
        """
        origin = request.getHeader(b"origin")
        if origin is None:
            return False
        host = request.getHeader(b"host") or b""
        return urlsplit(origin.decode("latin-1")).netloc != host.decode("latin-1")

    def _unknown(self, request: IRequest, name: str) -> bytes:
        return self._error(request, 404, f"no service named {name!r}")

    # Status, events, metrics

    @app.route("/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        return self._json(request, 200, status_json(self._backends.snapshot()))

    @app.route("/events", methods=["GET"])
    async def events(self, request: Request) -> None:
        stream = _EventStream(request, self._clock, self._heartbeat, self._backends)
        stream.open()
        try:
            await _until_client_leaves()
        finally:
            stream.close()

    @app.route("/metrics", methods=["GET"])
    async def metrics_text(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", self.metrics.content_type.encode("ascii"))
        return self.metrics.render()

    # Actions

    @app.route("/services/<name:name>/start", methods=["POST"], merge_slashes=False)
    async def start(self, request: IRequest, name: str) -> bytes:
        if self._cross_origin(request):
            return self._error(request, 403, "cross-origin request refused")
        if self._service_json(name) is None:
            return self._unknown(request, name)
        try:
            await _shielded(self._backends.start(name))
        except UnknownService:
            return self._unknown(request, name)
        except ServiceUnavailable as e:
            return self._error(request, 503, str(e), name)
        return self._json(request, 200, self._service_json(name))

    @app.route("/services/<name:name>/stop", methods=["POST"], merge_slashes=False)
    async def stop(self, request: IRequest, name: str) -> bytes:
        if self._cross_origin(request):
            return self._error(request, 403, "cross-origin request refused")
        if self._service_json(name) is None:
            return self._unknown(request, name)
        force = (_arg(request, "force") or "").lower() in _TRUE
        try:
            await _shielded(self._backends.stop(name, force))
        except UnknownService:
            return self._unknown(request, name)
        except ServiceBusy:
            message = f"{name!r} has proxied connections; stop with force=1 to cut them"
            return self._error(request, 409, message, name)
        return self._json(request, 200, self._service_json(name))

    # Logs

    @app.route("/services/<name:name>/logs", methods=["GET"], merge_slashes=False)
    async def logs(self, request: Request, name: str) -> bytes | None:
        path = next((s.log_file_path for s in self._config.services if s.name == name), None)
        if path is None:
            return self._unknown(request, name)
        raw_tail = _arg(request, "tail")
        try:
            lines = DEFAULT_TAIL_LINES if raw_tail is None else int(raw_tail)
        except ValueError:
            lines = -1
        if lines < 0:
            return self._error(request, 400, "tail must be a whole number of lines")
        try:
            tail = read_tail(path, min(lines, MAX_TAIL_LINES))
        except OSError as e:
            return self._error(request, 500, f"cannot read the log file {path}: {e.strerror or e}")
        if (_arg(request, "follow") or "").lower() not in _TRUE:
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-store")
            text = "".join(line + "\n" for line in tail.lines) + tail.partial
            return text.encode("utf-8")
        stream = _LogStream(
            request, self._clock, self._heartbeat, path, tail, self._log_poll_interval
        )
        stream.open()
        try:
            await _until_client_leaves()
        finally:
            stream.close()
        return None

    # Dashboard

    def _asset(self, request: IRequest, name: str, content_type: str) -> bytes:
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Security-Policy", _CSP.encode("ascii"))
        return files("lmproxy.manage.dashboard").joinpath(name).read_bytes()

    @app.route("/", methods=["GET"])
    async def index(self, request: IRequest) -> bytes:
        return self._asset(request, "index.html", "text/html; charset=utf-8")

    @app.route("/dashboard/<string:name>", methods=["GET"])
    async def dashboard(self, request: IRequest, name: str) -> bytes:
        if name not in _ASSETS:
            return self._error(request, 404, "not found")
        return self._asset(request, name, _ASSETS[name])

    # Errors

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return self._error(request, 404, "not found")

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        allowed = getattr(failure.value, "valid_methods", None) or []
        request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        method = request.method.decode("ascii", errors="replace")
        return self._error(request, 405, f"method {method} not allowed")
