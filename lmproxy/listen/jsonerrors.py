"""
The JSON answers of the OpenAI port: JSON bodies, errors in the shape of
the request's path (OpenAI's, or Anthropic's on its Messages paths: built
by L{lmproxy.openai_errors.error_body}) with the headers that say whether to
retry, and a Klein app whose resource answers even an undecodable URL with
such an error.
"""

from __future__ import annotations

# werkzeug's routing encodes each request's host with the "idna" codec, whose
# module Python imports on first use: imported then, it would fail when the
# process is out of file descriptors, and so would the request.
import encodings.idna  # noqa: F401
import json
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from klein.resource import KleinResource
from twisted.web.iweb import IRequest

from lmproxy.openai_errors import error_body, retry_headers

JSON_CONTENT_TYPE = b"application/json; charset=utf-8"
"""The Content-Type of every JSON answer of the OpenAI port."""


def encode(document: object) -> bytes:
    """
    C{document} as UTF-8 JSON (non-ASCII characters as they are).

    @param document: what C{json.dumps} accepts.
    """
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def json_response(request: IRequest, status: int, document: object) -> bytes:
    """
    Set C{request}'s status and Content-Type, and return C{document} as its body.

    @param request: the request to answer.
    @param status: the HTTP status code.
    @param document: the JSON document to answer with.
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
    return encode(document)


def error_response(
    request: IRequest,
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> bytes:
    """
    Answer C{request} with an error in the shape of its path
    (L{lmproxy.openai_errors.error_body}), and the headers of
    L{lmproxy.openai_errors.retry_headers} for C{status}.

    @param request: the request to answer.
    @param status: the HTTP status code.
    @param message: the error's C{message}, fit to show a user.
    @param kind: the error's C{type} in OpenAI's shape.
    @param param: the request parameter at fault, if any.
    @param code: the error's machine-readable C{code}, if any.
    @return: the body.
    """
    for name, value in retry_headers(status):
        request.setHeader(name, value)
    document = error_body(request.path, status, message, kind, param, code)
    return json_response(request, status, document)


def model_not_found(request: IRequest, model: str) -> bytes:
    """
    Answer C{request} with the 404 for an unknown model id.

    @param request: the request to answer.
    @param model: the id the request named.
    @return: the body.
    """
    return error_response(request, 404, unknown_model(model), param="model", code="model_not_found")


def unknown_model(model: str) -> str:
    """The message of the 404 for an unknown model id (C{model_not_found})."""
    return f"The model {model!r} does not exist."


def unroutable(request: IRequest) -> str | None:
    """
    Why Klein cannot route C{request} (it would log a traceback, and answer
    400 in plain text or 500), or C{None}: a path or host that is not UTF-8,
    or a host name that is not one (werkzeug encodes it with IDNA, which
    refuses a label over 63 bytes).

    @param request: a request whose path and headers are in.
    """
    try:
        unquote_to_bytes(request.path).decode("utf-8")
        host = request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return "The URL is not valid UTF-8."
    try:
        host.encode("idna")
    except UnicodeError:
        return "The Host header is not a valid host name."
    return None


class JsonErrorsResource(KleinResource):
    """
    Klein's resource, except that a URL that is not UTF-8 gets a JSON 400
    instead of Klein's plain-text one and a logged traceback.
    """

    def render(self, request: IRequest) -> Any:  # Klein's own return type is private
        """Answer an undecodable path or host with a JSON 400, else as Klein does."""
        problem = unroutable(request)
        if problem is not None:
            return error_response(request, 400, problem)
        return super().render(request)


class JsonErrorsKlein(Klein):
    """A Klein app whose resource answers even undecodable URLs with JSON."""

    def resource(self) -> KleinResource:
        """The app's resource: a L{JsonErrorsResource}."""
        return JsonErrorsResource(self)
