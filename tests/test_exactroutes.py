"""
Tests for L{lmproxy.listen.exactroutes}: a Klein app's argument-free routes
answer as through Klein, and everything else is Klein's.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyRequest

from lmproxy.listen.exactroutes import ExactRoutes


class App:
    """A Klein app with exact routes, a route with an argument, and a slow route."""

    app = Klein()

    def __init__(self) -> None:
        self.pending: Deferred[bytes] = Deferred()
        self.cancelled = False

    @app.route("/hello", methods=["POST"])
    def hello(self, request: Request) -> bytes:
        return b"hello"

    @app.route("/items/<name>", methods=["GET"])
    def item(self, request: Request, name: str) -> bytes:
        return name.encode()

    @app.route("/slow", methods=["POST"])
    async def slow(self, request: Request) -> bytes:
        try:
            return await self.pending
        except BaseException:
            self.cancelled = True
            raise

    @app.route("/broken", methods=["POST"])
    def broken(self, request: Request) -> bytes:
        raise ValueError("bug")


def on_error(request: Any, failure: Failure) -> bytes:
    request.setResponseCode(500)
    return b"error: " + str(failure.value).encode()


class ExactRoutesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.instance = App()
        self.resource = ExactRoutes(self.instance.app, self.instance.app.resource(), on_error)

    def render(self, method: bytes, path: bytes) -> DummyRequest:
        request: Any = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.method, request.path, request.uri = method, path, path
        self.assertEqual(self.resource.render(request), NOT_DONE_YET)
        return request

    def test_exact_route(self) -> None:
        request = self.render(b"POST", b"/hello")
        self.assertEqual((request.written, request.finished), ([b"hello"], 1))

    def through_klein(self, method: str, path: str) -> tuple[int, bytes]:
        """The status and body of a request that Klein answers (real requests)."""
        client: Any = StubTreq(self.resource)
        response = self.successResultOf(client.request(method, "http://app" + path))
        return response.code, self.successResultOf(client.content(response))

    def test_route_with_argument_is_kleins(self) -> None:
        self.assertEqual(self.through_klein("GET", "/items/abc"), (200, b"abc"))

    def test_wrong_method_is_kleins(self) -> None:
        """A known path with another method: Klein's 405."""
        self.assertEqual(self.through_klein("GET", "/hello")[0], 405)

    def test_unknown_path_is_kleins(self) -> None:
        self.assertEqual(self.through_klein("POST", "/nowhere")[0], 404)

    def test_failure(self) -> None:
        request = self.render(b"POST", b"/broken")
        self.assertEqual(request.responseCode, 500)
        self.assertEqual((request.written, request.finished), ([b"error: bug"], 1))
        self.flushLoggedErrors(ValueError)

    def test_asynchronous(self) -> None:
        request = self.render(b"POST", b"/slow")
        self.assertEqual(request.written, [])
        self.instance.pending.callback(b"late")
        self.assertEqual((request.written, request.finished), ([b"late"], 1))

    def test_client_gone_cancels(self) -> None:
        """A client that leaves cancels the endpoint; nothing is written or logged."""
        request = self.render(b"POST", b"/slow")
        request.processingFailed(Failure(ConnectionError("gone")))
        self.assertTrue(self.instance.cancelled)
        self.assertEqual(request.written, [])
        self.assertEqual(self.flushLoggedErrors(), [])
