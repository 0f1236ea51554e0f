"""
The management API (a Klein app served on C{ManagementApi.ListenPort}).

Routes:

  - C{GET /status}: every service and resource (see L{lmproxy.manage.statusjson}).
  - C{POST /services/{name}/start}, C{POST /services/{name}/stop[?force=1]}.
  - C{GET /events}: Server-Sent Events (see L{lmproxy.manage.streams}).  On
    connect one C{status} event (the whole C{/status} document); then
    C{service} (one service object) and C{resource} (one resource object) for
    each one that changed, the changes of one reactor turn coalesced;
    C{start_finished} (C{{"service", "seconds", "succeeded"}}) and C{evicted}
    (C{{"service"}}); a C{: keepalive} comment every 15 s.
  - C{GET /services/{name}/logs?tail=N[&follow=1]}: the log's last lines as
    text; with C{follow}, SSE C{lines} events (one C{data:} field per line)
    and a C{reset} event when the file was truncated or replaced.
  - C{GET /metrics}: Prometheus text format (see L{lmproxy.manage.metrics}).
  - C{GET /timeline}: what every service did in the last hour (see
    L{lmproxy.manage.timeline}).
  - C{GET /} and C{GET /dashboard/{file}}: the dashboard.

Everything is answered from the supervisor's statuses and never waits on a
start or a resource check.  Errors are JSON: C{{"error": message}}, plus
C{"service"} (its state) where one is concerned.

Served behind L{lmproxy.listen.guard.management_resource}, which refuses
strangers first: a Host that is not allowed, another site's page, a request
without an API key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter

from lmproxy.apishared import query_flag, shielded
from lmproxy.config import Config
from lmproxy.interfaces import (
    IBackends,
    ReloadBusy,
    ReloadOutcome,
    ReloadRefused,
    ServiceBusy,
    ServiceUnavailable,
    UnknownService,
)
from lmproxy.manage.logtail import MAX_TAIL_LINES, read_tail
from lmproxy.manage.metrics import Metrics
from lmproxy.manage.statusjson import JSONObject, service_json, status_json
from lmproxy.manage.streams import EventStream, LogStream, until_client_leaves
from lmproxy.manage.timeline import Timeline
from lmproxy.requeststats import RequestStats

HEARTBEAT_SECONDS = 15.0
LOG_POLL_SECONDS = 0.5
DEFAULT_TAIL_LINES = 100

_ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The files of /dashboard/{file} and their types: every ES module, the style
# sheet and the icon in the dashboard package.  Nothing else is served there
# (index.html is GET /).
_ASSETS = {
    entry.name: content_type
    for entry in files("lmproxy.manage.dashboard").iterdir()
    for suffix, content_type in _ASSET_TYPES.items()
    if entry.name.endswith(suffix) and entry.is_file()
}
# The dashboard builds its DOM from data with textContent only; this policy is
# a second line of defence should a bug ever let markup through.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class _NameConverter(BaseConverter):
    """A service name: anything, slashes included (C{Qwen/Qwen2.5-7B})."""

    part_isolating = False
    regex = ".+?"
    weight = 200


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    return values[-1].decode("utf-8", errors="replace") if values else None


class ManagementApi:
    """
    The management API and dashboard; serve C{api.app.resource()}, behind
    C{lmproxy.listen.guard.management_resource}.

    C{clock} drives coalescing, keepalives and log polling; the intervals can
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
        requests: RequestStats | None = None,
        reload: Callable[[bool], Deferred[ReloadOutcome]] | None = None,
    ) -> None:
        """
        @param reload: what C{POST /reload} calls, with C{force}; C{None}: 503.
        """
        self._backends = backends
        self._reload = reload
        self._config = config
        self._clock = clock
        self._heartbeat = heartbeat
        self._log_poll_interval = log_poll_interval
        self.metrics = Metrics(backends, self._clock, requests)
        self.recorder = Timeline(backends, self._clock)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: what the API reads of it (the services' log files)."""
        self._config = config

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
        try:
            return service_json(self._backends.service_status(name))
        except UnknownService:
            return None

    def _unknown(self, request: IRequest, name: str) -> bytes:
        return self._error(request, 404, f"no service named {name!r}")

    # Status, events, metrics

    @app.route("/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        return self._json(request, 200, status_json(self._backends.snapshot()))

    @app.route("/events", methods=["GET"])
    async def events(self, request: Request) -> None:
        stream = EventStream(request, self._clock, self._heartbeat, self._backends)
        stream.open()
        try:
            await until_client_leaves()
        finally:
            stream.close()

    @app.route("/timeline", methods=["GET"])
    async def timeline(self, request: IRequest) -> bytes:
        return self._json(request, 200, self.recorder.json())

    @app.route("/metrics", methods=["GET"])
    async def metrics_text(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", self.metrics.content_type.encode("ascii"))
        return self.metrics.render()

    # Actions

    @app.route("/services/<name:name>/start", methods=["POST"], merge_slashes=False)
    async def start(self, request: IRequest, name: str) -> bytes:
        if self._service_json(name) is None:
            return self._unknown(request, name)
        try:
            await shielded(self._backends.start(name))
        except UnknownService:
            return self._unknown(request, name)
        except ServiceUnavailable as e:
            return self._error(request, 503, str(e), name)
        return self._json(request, 200, self._service_json(name))

    @app.route("/services/<name:name>/stop", methods=["POST"], merge_slashes=False)
    async def stop(self, request: IRequest, name: str) -> bytes:
        if self._service_json(name) is None:
            return self._unknown(request, name)
        force = query_flag(request, "force", False) is True  # anything else: no force
        try:
            await shielded(self._backends.stop(name, force))
        except UnknownService:
            return self._unknown(request, name)
        except ServiceBusy:
            message = f"{name!r} has proxied connections; stop with force=1 to cut them"
            return self._error(request, 409, message, name)
        return self._json(request, 200, self._service_json(name))

    @app.route("/reload", methods=["POST"])
    async def reload(self, request: IRequest) -> bytes:
        force = query_flag(request, "force", False)
        if force is None:
            return self._error(request, 400, "force must be 1 or 0 (true or false)")
        if self._reload is None:
            return self._error(request, 503, "this lmproxy cannot reload its config")
        try:
            outcome = await shielded(self._reload(force))
        except ReloadBusy as e:
            return self._error(request, 409, str(e))
        except ReloadRefused as e:
            body = {
                "error": "the config was not reloaded (the running one stays)",
                "problems": e.problems,
            }
            return self._json(request, 400, body)
        return self._json(request, 200, {"reloaded": True, **attrs.asdict(outcome)})

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
        if query_flag(request, "follow", False) is not True:  # anything else: no follow
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-store")
            text = "".join(line + "\n" for line in tail.lines) + tail.partial
            return text.encode("utf-8")
        stream = LogStream(
            request, self._clock, self._heartbeat, path, tail, self._log_poll_interval
        )
        stream.open()
        try:
            await until_client_leaves()
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
