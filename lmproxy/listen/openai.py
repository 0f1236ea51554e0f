"""
The OpenAI-compatible API port: route each request by the model it names to
the service that serves that model, and forward it there.

HTTP is terminated here and every request is forwarded on its own, so one
keep-alive client connection can talk to several models in turn.  A request
holds an L{lmproxy.interfaces.ILease} from L{IBackends.acquire} from the
moment its backend is running until its response is over: while it waits it
counts as a waiting connection of the service (a start it triggers is shared
with everyone else), and while it is forwarded its service is never evicted.

Serve it with C{OpenAiApi(...).site()}: that site (L{lmproxy.listen.sites})
holds the port's request-body limit and refuses strangers (API keys, the
Origin of browser requests: L{lmproxy.listen.guard}) before their body is
read, and L{lmproxy.listen.jsonerrors} builds its JSON answers.
"""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.iweb import IAgent, IRequest
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.http import parse_options_header

from lmproxy.config import DEFAULT_OPENAI_MAX_BODY_BYTES, Config
from lmproxy.interfaces import IBackends, ServiceUnavailable
from lmproxy.listen import forwarderrors
from lmproxy.listen.backendpool import IBackendConnections
from lmproxy.listen.exactroutes import ExactRoutes
from lmproxy.listen.frontsite import FrontSite
from lmproxy.listen.guard import (
    GatedSite,
    HeaderLookup,
    KeyCheck,
    Refusal,
    last_value,
    origin_refusal,
)
from lmproxy.listen.httpforward import relay, send
from lmproxy.listen.jsonerrors import (
    JsonErrorsKlein,
    error_response,
    json_response,
    model_not_found,
)
from lmproxy.listen.leanroutes import Forwarding, LeanRoutes
from lmproxy.listen.limits import QueueFull, RequestLimit, request_limits
from lmproxy.listen.multipart import multipart_field
from lmproxy.logs import debugging, log_observer
from lmproxy.requeststats import CLIENT_LEFT, RequestStats, RequestTally

# Through log_observer: the per-request debug line only with LogLevel Debug.
log = Logger(observer=log_observer)

OWNED_BY = "lmproxy"

# Connecting to the backend failed: the lease may let us reconnect (ILease.may_reconnect).
_CONNECT_ERRORS = (ConnectError, DNSLookupError)
# The backend was reached but gave no usable response.
_EXCHANGE_ERRORS = (ResponseFailed, RequestTransmissionFailed, RequestNotSent)


class OpenAiApi:
    """
    The Klein app of the OpenAI port: C{GET /v1/models[/{id}]}, and the
    inference endpoints, each forwarded to the service of its model.

    @param backends: hands out running backends.
    @param config: the services and their C{openai_api_models}; the port's
        API keys and allowed origins.
    @param agent: sends the forwarded requests (in production an C{Agent} with
        a persistent C{HTTPConnectionPool}).
    @param clock: times requests for the log; drives the timeouts of L{site}.
    @param max_body_bytes: larger request bodies are refused with 413 (by L{site}).
    """

    app = JsonErrorsKlein()

    def __init__(
        self,
        backends: IBackends,
        config: Config,
        agent: IAgent,
        clock: IReactorTime,
        max_body_bytes: int = DEFAULT_OPENAI_MAX_BODY_BYTES,
        stats: RequestStats | None = None,
    ) -> None:
        self._backends = backends
        self._agent = agent
        self._clock = clock
        self._max_body_bytes = max_body_bytes
        self._services_by_model: dict[str, str] = {}  # shared with LeanRoutes
        self.limits: dict[str, RequestLimit] = {}  # shared with Forwarding
        self.stats = stats or RequestStats(())
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        Follow a reloaded config, from the next request of every connection
        on (kept-alive ones too): routes, keys, origins and limits.  The
        objects the site shares are changed in place; a limit that stays is
        resized (its queue keeps its order), one that goes lets its queue in.
        """
        self._keys = KeyCheck(config.openai_api_keys, "OpenAiApi.ApiKeys")
        self._origins = config.openai_allowed_origins
        # Model id -> service name, in config order (config rejects duplicate ids).
        self._services_by_model.clear()
        self._services_by_model.update(
            (model, service.name)
            for service in config.services
            if service.openai_api
            for model in service.openai_api_models
        )
        for service in self._services_by_model.values():
            self.stats.of(service)  # its series exist from the start
        wanted = request_limits(config, self._clock, self._backends)
        for name, limit in list(self.limits.items()):
            if name not in wanted:
                limit.resize(sys.maxsize, None)  # no limit any more: the queue goes in
                del self.limits[name]
        for name, limit in wanted.items():
            kept = self.limits.get(name)
            if kept is None:
                self.limits[name] = limit
            else:
                kept.resize(limit.concurrent, limit.queued, limit.wait)

    def site(self) -> Site:
        """
        The twisted.web site to serve this API on, a L{GatedSite}.
        Unlike a plain C{Site(api.app.resource())}, it leaves multipart bodies
        unparsed, it refuses a body over the limit as soon as its size is
        known, before reading it: the routes rely on it for the limit; and it
        refuses strangers (L{gate}) as soon as the headers are in.  The
        routes without arguments skip werkzeug's matching (L{ExactRoutes}).

        When the agent also hands out its connections
        (L{IBackendConnections}), the site is a L{FrontSite}: the JSON
        inference routes take a hot path past twisted.web
        (L{lmproxy.listen.leanforward}), which answers as these routes do.
        """
        resource = ExactRoutes(self.app, self.app.resource(), self.internal_error)
        if not IBackendConnections.providedBy(self._agent):
            return GatedSite(resource, self._max_body_bytes, self._clock, self.gate)
        forwarding = Forwarding(
            self._backends, IBackendConnections(self._agent), self._clock, self.stats, self.limits
        )
        routes = LeanRoutes(
            forwarding,
            self.json_paths(),
            self._services_by_model,
            self.gate,
            self._max_body_bytes,
        )
        return FrontSite(resource, self._max_body_bytes, self._clock, self.gate, routes)

    def json_paths(self) -> frozenset[bytes]:
        """The paths of the routes that take a JSON body (L{json_inference})."""
        endpoints = self.app.endpoints
        return frozenset(
            rule.rule.encode("ascii")
            for rule in self.app.url_map.iter_rules()
            if inspect.unwrap(endpoints[rule.endpoint]) is OpenAiApi.json_inference
        )

    def gate(self, headers: HeaderLookup) -> Refusal | None:
        """
        Why a request whose headers are in is refused, before anything
        starts: a browser request from a page whose origin is not allowed
        (403), or a request without one of the port's API keys (401).
        """
        origin, host = last_value(headers, b"origin"), last_value(headers, b"host")
        return origin_refusal(origin, host, self._origins) or self._keys.refusal(headers)

    # --- Model list -----------------------------------------------------------

    def _model_entry(self, model: str, created: int) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": created, "owned_by": OWNED_BY}

    @app.route("/v1/models", methods=["GET"])
    def list_models(self, request: Request) -> bytes:
        """Every model id of every OpenAI service, in config order."""
        created = int(self._backends.snapshot().started_at)
        data = [self._model_entry(model, created) for model in self._services_by_model]
        return json_response(request, 200, {"object": "list", "data": data})

    # merge_slashes=False: an id such as "org//model" must reach us as it is.
    @app.route("/v1/models/<path:model_id>", methods=["GET"], merge_slashes=False)
    def retrieve_model(self, request: Request, model_id: str) -> bytes:
        """One model id, or OpenAI's 404."""
        if model_id not in self._services_by_model:
            return model_not_found(request, model_id)
        created = int(self._backends.snapshot().started_at)
        return json_response(request, 200, self._model_entry(model_id, created))

    # --- Inference ------------------------------------------------------------

    @app.route("/v1/chat/completions", methods=["POST"], endpoint="chat_completions")
    @app.route("/v1/completions", methods=["POST"], endpoint="completions")
    @app.route("/v1/embeddings", methods=["POST"], endpoint="embeddings")
    @app.route("/v1/responses", methods=["POST"], endpoint="responses")
    @app.route("/v1/rerank", methods=["POST"], endpoint="rerank")
    @app.route("/v1/images/generations", methods=["POST"], endpoint="images_generations")
    @app.route("/v1/audio/speech", methods=["POST"], endpoint="audio_speech")
    async def json_inference(self, request: Request) -> bytes | None:
        """A JSON object body whose C{model} names the model."""
        body = _body(request)
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as e:
            return error_response(request, 400, f"The body is not valid JSON: {e}")
        if not isinstance(document, dict):
            return error_response(request, 400, "The body must be a JSON object.")
        model = document.get("model")
        return await self._route(request, model, body)

    @app.route("/v1/audio/transcriptions", methods=["POST"], endpoint="audio_transcriptions")
    @app.route("/v1/audio/translations", methods=["POST"], endpoint="audio_translations")
    async def multipart_inference(self, request: Request) -> bytes | None:
        """A multipart/form-data body whose C{model} field names the model."""
        body = _body(request)
        content_type, options = parse_options_header(
            (request.getHeader(b"content-type") or b"").decode("latin-1")
        )
        boundary = options.get("boundary")
        if content_type != "multipart/form-data" or not boundary:
            return error_response(
                request, 400, "The body must be multipart/form-data with a boundary."
            )
        try:
            model = multipart_field(body, boundary.encode("latin-1"), "model")
        except ValueError as e:
            return error_response(request, 400, f"The multipart/form-data body is malformed: {e}")
        return await self._route(request, model, body)

    async def _route(self, request: Request, model: object, body: bytes) -> bytes | None:
        if model is None:
            return error_response(
                request, 400, "You must provide a model parameter.", param="model"
            )
        if not isinstance(model, str):
            return error_response(
                request, 400, "The model parameter must be a string.", param="model"
            )
        service = self._services_by_model.get(model)
        if service is None:
            return model_not_found(request, model)
        limit = self.limits.get(service)
        tally = RequestTally(
            self.stats.of(service), model, self._clock.seconds(), queued=limit is not None
        )
        turn = None
        try:
            if limit is not None:
                turn = await limit.take()
                tally.turn()
            answer = await self._forward(request, service, body, tally)
        except QueueFull as e:
            answer = forwarderrors.queue_full(service, e).render(request)
        except CancelledError:
            tally.done(CLIENT_LEFT)
            raise
        finally:
            if turn is not None:
                turn.done()
        tally.done(request.code)
        return answer

    async def _forward(
        self, request: Request, service: str, body: bytes, tally: RequestTally
    ) -> bytes | None:
        """
        Get a running backend of C{service} and forward the request to it.
        A client that leaves makes Klein cancel this coroutine, which cancels
        whatever it awaits: the wait for the backend, the backend request, or
        the response relay.

        A failed connection is retried after C{lease.reconnect()} as long as
        the lease allows it (C{ILease.may_reconnect}: once per client), as the
        TCP listener does.
        """
        began = self._clock.seconds()
        try:
            lease = await self._backends.acquire(service)
        except ServiceUnavailable as e:
            return forwarderrors.unavailable(service, e).render(request)
        tally.leased(self._clock.seconds())
        try:
            while True:
                try:
                    response = await send(self._agent, request, lease.host, lease.port, body)
                    break
                except _CONNECT_ERRORS as e:
                    if not lease.may_reconnect:
                        raise
                    log.info(
                        "Connecting to {service} at {host}:{port} failed ({why}); reconnecting",
                        service=service,
                        host=lease.host,
                        port=lease.port,
                        why=str(e),
                    )
                    lease = await lease.reconnect()
            tally.first_byte(self._clock.seconds())
            await relay(response, request, service)
        except ServiceUnavailable as e:
            return forwarderrors.unavailable(service, e).render(request)
        except _CONNECT_ERRORS as e:
            return forwarderrors.connect_failed(service, e).render(request)
        except _EXCHANGE_ERRORS as e:
            if _cancelled(e):
                # The client left (Klein cancelled us): nobody to answer.
                log.info(
                    "{method} {path} -> {service}: the client left before the response",
                    method=request.method.decode("latin-1"),
                    path=request.path.decode("latin-1"),
                    service=service,
                )
                raise CancelledError() from None
            return forwarderrors.no_response(service, e).render(request)
        finally:
            # The lease of a failed reconnect() was released by it; release is idempotent.
            lease.release()
        if debugging():  # a cheap check: building the event costs more
            log.debug(
                "{method} {path} -> {service}: {code} in {seconds:.3f}s",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
                service=service,
                code=request.code,
                seconds=self._clock.seconds() - began,
            )
        return None

    # --- Errors that Klein raises itself ---------------------------------------

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        """No route has this path: OpenAI's 404 for an invalid URL."""
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1")
        return error_response(request, 404, f"Invalid URL ({method} {path})")

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        """A route has this path but not this method: 405, with Allow."""
        error = failure.value
        assert isinstance(error, MethodNotAllowed)
        allowed = sorted(error.valid_methods or ())
        request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1")
        return error_response(
            request,
            405,
            f"Method {method} is not allowed for {path}; use {' or '.join(allowed)}.",
            code="method_not_allowed",
        )

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        """Any other HTTP error of Klein's, as JSON."""
        error = failure.value
        assert isinstance(error, HTTPException)
        return error_response(request, error.code or 500, error.description or error.name)

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        """A bug: logged, and answered with a JSON 500, never a traceback page."""
        log.failure("Error handling {path}", failure, path=request.path.decode("latin-1"))
        return error_response(request, 500, "Internal error in lmproxy.", "server_error")


def _body(request: Request) -> bytes:
    """The whole body of C{request}: L{GatedSite} has kept it within the limit."""
    assert request.content is not None  # twisted.web sets it before rendering
    return request.content.read()


def _cancelled(error: Exception) -> bool:
    """Whether C{error} is the backend exchange ending because we cancelled it."""
    reasons = getattr(error, "reasons", None) or []
    return bool(reasons) and all(reason.check(CancelledError) for reason in reasons)
