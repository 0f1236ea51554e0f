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
from collections.abc import Callable
from functools import partial

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent, IRequest
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.http import parse_options_header

from lmproxy.config import Config
from lmproxy.interfaces import IBackends
from lmproxy.listen.backendpool import IBackendConnections
from lmproxy.listen.cors import CorsPolicy, CorsSite
from lmproxy.listen.exactroutes import ExactRoutes
from lmproxy.listen.frontsite import FrontSite
from lmproxy.listen.guard import HeaderLookup, KeyCheck, Refusal
from lmproxy.listen.jsonerrors import (
    JsonErrorsKlein,
    error_response,
    json_response,
    model_not_found,
)
from lmproxy.listen.leanroutes import Forwarding, LeanRoutes
from lmproxy.listen.limits import RequestLimit, request_limits
from lmproxy.listen.loadingfeedback import is_streaming
from lmproxy.listen.modelcontrol import ModelControl
from lmproxy.listen.modellist import ModelTable, with_model
from lmproxy.listen.multipart import multipart_field, with_field
from lmproxy.listen.routeforward import RequestForwarder
from lmproxy.listen.sites import BodyLimitedSite
from lmproxy.listen.upstream import UpstreamRoutes
from lmproxy.logs import log_observer
from lmproxy.requeststats import RequestStats

log = Logger(observer=log_observer)


class OpenAiApi:
    """
    The Klein app of the OpenAI port: C{GET /v1/models[/{id}]}, model
    control (C{/v1/models/{id}/load}, C{/unload}, C{/events}:
    L{lmproxy.listen.modelcontrol}), and the inference endpoints, each
    forwarded to the service of its model.

    @param backends: hands out running backends.
    @param config: the services and their C{openai_api_models}; the port's
        API keys and allowed origins.
    @param agent: sends the forwarded requests (in production an C{Agent} with
        a persistent C{HTTPConnectionPool}).
    @param clock: times requests for the log; drives the timeouts of L{site}.
    @param stats: counts the requests (the management API shows them).
    """

    app = JsonErrorsKlein()

    def __init__(
        self,
        backends: IBackends,
        config: Config,
        agent: IAgent,
        clock: IReactorTime,
        stats: RequestStats | None = None,
    ) -> None:
        self._backends = backends
        self._agent = agent
        self._clock = clock
        # What holds the body limit, changed in place on a reload: the sites, the hot paths.
        self._limited: list[BodyLimitedSite | LeanRoutes] = []
        self.models = ModelTable()  # shared with the hot path and the passthrough
        self.limits: dict[str, RequestLimit] = {}  # shared with Forwarding
        self.cors = CorsPolicy()  # shared with the site and Forwarding
        self.stats = stats or RequestStats(())
        self._forwarder = RequestForwarder(backends, agent, clock, self.stats, self.limits)
        self._control = ModelControl(backends, clock, self.models)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        Follow a reloaded config, from the next request of every connection
        on (kept-alive ones too): routes, keys, origins, limits and the
        body limit (C{MaxRequestBodyBytes}).  The
        objects the site shares are changed in place; a limit that stays is
        resized (its queue keeps its order), one that goes lets its queue in.
        """
        self._keys = KeyCheck(config.openai_api_keys, "OpenAiApi.ApiKeys")
        self._max_body_bytes = config.openai_max_body_bytes
        for limited in self._limited:
            limited.max_body_bytes = self._max_body_bytes
        self.cors.allow(config.openai_allowed_origins)
        self.models.reconfigure(config)
        self._forwarder.feedback.mode = config.openai_loading_feedback
        for service in self.models.services.values():
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
        The twisted.web site to serve this API on, a L{CorsSite}.
        Unlike a plain C{Site(api.app.resource())}, it leaves multipart bodies
        unparsed, it refuses a body over the limit as soon as its size is
        known, before reading it: the routes rely on it for the limit; and it
        refuses strangers (L{gate}) as soon as the headers are in.  The
        routes without arguments skip werkzeug's matching (L{ExactRoutes}).

        When the agent also hands out its connections
        (L{IBackendConnections}), the site is a L{FrontSite}: the JSON
        inference routes take a hot path past twisted.web
        (L{lmproxy.listen.leanforward}), which answers as these routes do,
        and C{/upstream/{model}/{path}} passes through to the model's service
        (L{lmproxy.listen.upstream}).
        """
        resource = ExactRoutes(self.app, self.app.resource(), self.internal_error)
        if not IBackendConnections.providedBy(self._agent):
            site = CorsSite(resource, self._max_body_bytes, self._clock, self.gate, self.cors)
            self._limited.append(site)
            return site
        forwarding = Forwarding(
            self._backends,
            IBackendConnections(self._agent),
            self._clock,
            self.stats,
            self.limits,
            self.cors,
        )
        routes = LeanRoutes(
            forwarding,
            self.json_paths(),
            self.models,
            self.gate,
            self._max_body_bytes,
            self._forwarder.feedback,
        )
        upstream = UpstreamRoutes(forwarding, self.models.services, self.gate)
        front = FrontSite(
            resource, self._max_body_bytes, self._clock, self.gate, routes, upstream, self.cors
        )
        self._limited.extend([front, routes])
        return front

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
        return self.cors.refusal(headers) or self._keys.refusal(headers)

    # --- Model list -----------------------------------------------------------

    @app.route("/health", methods=["GET"])
    def health(self, request: Request) -> bytes:
        """lmproxy itself is up (whatever its models are doing), as llama.cpp answers."""
        return json_response(request, 200, {"status": "ok"})

    @app.route("/v1/models", methods=["GET"])
    @app.route("/models", methods=["GET"], endpoint="list_models_alias")
    def list_models(self, request: Request) -> bytes:
        """Every listed model id of every OpenAI service, in config order, with its state."""
        data = self.models.entries(self._backends.snapshot())
        return json_response(request, 200, {"object": "list", "data": data})

    # merge_slashes=False: an id such as "org//model" must reach us as it is.
    @app.route("/v1/models/<path:model_id>", methods=["GET"], merge_slashes=False)
    @app.route(
        "/models/<path:model_id>",
        methods=["GET"],
        merge_slashes=False,
        endpoint="retrieve_model_alias",
    )
    def retrieve_model(self, request: Request, model_id: str) -> bytes:
        """One model id (listed or not, or an alias), or OpenAI's 404."""
        entry = self.models.entry(model_id, self._backends.snapshot())
        if entry is None:
            return model_not_found(request, model_id)
        return json_response(request, 200, entry)

    # --- Model control (L{ModelControl}) ---------------------------------------

    # Routed before retrieve_model: an id that ends in /events (known) is that model.
    @app.route("/v1/models/<path:model_id>/events", methods=["GET"], merge_slashes=False)
    async def model_events(self, request: Request, model_id: str) -> bytes | None:
        """The model's state as Server-Sent Events."""
        if self.models.listing(f"{model_id}/events") is not None:
            return self.retrieve_model(request, f"{model_id}/events")
        return await self._control.events(request, model_id)

    @app.route("/v1/models/<path:model_id>/load", methods=["POST"], merge_slashes=False)
    async def load_model(self, request: Request, model_id: str) -> bytes:
        """Start the model's service (C{?wait=0}: answer at once)."""
        return await self._control.load(request, model_id)

    @app.route("/v1/models/<path:model_id>/unload", methods=["POST"], merge_slashes=False)
    async def unload_model(self, request: Request, model_id: str) -> bytes:
        """Stop the model's service (C{?force=1}: even mid-request)."""
        return await self._control.unload(request, model_id)

    # --- Inference ------------------------------------------------------------

    @app.route("/v1/chat/completions", methods=["POST"], endpoint="chat_completions")
    @app.route("/v1/completions", methods=["POST"], endpoint="completions")
    @app.route("/v1/embeddings", methods=["POST"], endpoint="embeddings")
    @app.route("/v1/responses", methods=["POST"], endpoint="responses")
    @app.route("/v1/rerank", methods=["POST"], endpoint="rerank")
    @app.route("/v1/images/generations", methods=["POST"], endpoint="images_generations")
    @app.route("/v1/audio/speech", methods=["POST"], endpoint="audio_speech")
    # Anthropic's Messages API (llama.cpp serves it); its errors have Anthropic's shape:
    @app.route("/v1/messages", methods=["POST"], endpoint="messages")
    @app.route("/v1/messages/count_tokens", methods=["POST"], endpoint="messages_count_tokens")
    # llama.cpp's own endpoints, when the body names a model (as llama-swap routes them):
    @app.route("/completion", methods=["POST"], endpoint="llamacpp_completion")
    @app.route("/infill", methods=["POST"], endpoint="llamacpp_infill")
    @app.route("/tokenize", methods=["POST"], endpoint="llamacpp_tokenize")
    @app.route("/detokenize", methods=["POST"], endpoint="llamacpp_detokenize")
    @app.route("/apply-template", methods=["POST"], endpoint="llamacpp_apply_template")
    @app.route("/embedding", methods=["POST"], endpoint="llamacpp_embedding")
    @app.route("/reranking", methods=["POST"], endpoint="llamacpp_reranking")
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
        streaming = is_streaming(document)
        return await self._route(request, model, body, partial(with_model, document), streaming)

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
        renamed = partial(with_field, body, boundary.encode("latin-1"), "model")
        return await self._route(request, model, body, renamed)

    async def _route(
        self,
        request: Request,
        model: object,
        body: bytes,
        renamed: Callable[[str], bytes],
        streaming: bool = False,
    ) -> bytes | None:
        """
        Forward C{body} to the service of C{model}, as C{renamed} gives it
        when the service has a C{UseModelName}; or answer why not.
        """
        if model is None:
            return error_response(
                request, 400, "You must provide a model parameter.", param="model"
            )
        if not isinstance(model, str):
            return error_response(
                request, 400, "The model parameter must be a string.", param="model"
            )
        service = self.models.services.get(model)
        if service is None:
            return model_not_found(request, model)
        forwarded_name = self.models.renamed(service, model)
        if forwarded_name is not None:
            body = renamed(forwarded_name)
        return await self._forwarder.route(request, service, model, body, streaming)

    # --- Errors that Klein raises itself ---------------------------------------

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        """No route has this path: the 404 for an invalid URL, as OpenAI words it."""
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
    """The whole body of C{request}: L{CorsSite} has kept it within the limit."""
    assert request.content is not None  # twisted.web sets it before rendering
    return request.content.read()
