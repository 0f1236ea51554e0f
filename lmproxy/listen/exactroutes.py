"""
A Klein app's routes without path arguments, dispatched by a dictionary.

For every request, Klein binds werkzeug's URL map and matches the path
against each rule: a tenth of the OpenAI port's CPU per forwarded request.
L{ExactRoutes} looks the method and path of a request up in a dictionary of
the app's argument-free rules first and calls that endpoint itself, as Klein
would; anything else (paths with arguments, unknown paths or methods, whose
404/405/redirect answers are Klein's) goes to the app's own resource.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from lmproxy.logs import log_observer

log = Logger(observer=log_observer)


class ExactRoutes(Resource):
    """
    The resource of a Klein app whose argument-free routes skip werkzeug.

    The endpoints it calls must answer with bytes, or C{None} once they have
    finished the request themselves, and raise no werkzeug C{HTTPException}:
    a failure goes to C{on_error}, as to the app's C{handle_errors(Exception)}
    handler.  A client that leaves cancels the endpoint, as with Klein.
    """

    isLeaf = True

    def __init__(
        self,
        app: Klein,
        fallback: IResource,
        on_error: Callable[[Request, Failure], bytes],
    ) -> None:
        """
        @param app: the app, bound to its instance (C{instance.app}).
        @param fallback: the app's resource, for every other request.
        @param on_error: answers a failed endpoint.
        """
        super().__init__()
        self._app = app
        self._fallback = fallback
        self._on_error = on_error
        self._endpoints: dict[tuple[bytes, bytes], str] = {}
        for rule in app.url_map.iter_rules():
            if rule.arguments or not rule.methods:
                continue
            for method in rule.methods:
                # The first rule of a path and method wins, as in werkzeug.
                key = (method.encode("ascii"), rule.rule.encode("utf-8"))
                self._endpoints.setdefault(key, rule.endpoint)

    def render(self, request: Request) -> Any:
        """Call the endpoint of an exact route, else render as Klein does."""
        endpoint = self._endpoints.get((request.method, request.path))
        if endpoint is None:
            return self._fallback.render(request)
        finished: list[object] = []
        request.notifyFinish().addBoth(finished.append)
        result = maybeDeferred(self._app.execute_endpoint, endpoint, request)
        request.notifyFinish().addErrback(lambda _: result.cancel())
        result.addErrback(self._failed, request, finished)
        result.addCallback(self._write, request, finished)
        result.addErrback(
            lambda failure: log.failure("Error answering {path}", failure, path=request.path)
        )
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Request, finished: list[object]) -> object:
        if finished:
            # The client is gone: nobody to answer.
            if not failure.check(CancelledError):
                log.failure("Error handling {path}", failure, path=request.path)
            return None
        return self._on_error(request, failure)

    def _write(self, answer: object, request: Request, finished: list[object]) -> None:
        if isinstance(answer, bytes):
            request.write(answer)
        if not finished:
            request.finish()
